package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// DefaultVersion is the major version a test gets when it names none: the one
// Debian's packages install, with the client tools beside it.
const DefaultVersion = 15

const (
	debianBinDir = "/usr/lib/postgresql/15/bin"
	installHint  = "run `make services` (or, as root, scripts/install-postgres.sh)"
)

// Versions returns the major versions the tests cover, oldest first.
func Versions() []int {
	return []int{14, 15, 16, 17, 18}
}

// CacheDir returns the directory that holds downloaded test services:
// $WALSHIP_CACHE, else $XDG_CACHE_HOME/walship, else $HOME/.cache/walship.
// scripts/install-postgres.sh uses the same rule.
func CacheDir() (string, error) {
	if dir := os.Getenv("WALSHIP_CACHE"); dir != "" {
		if !filepath.IsAbs(dir) {
			return "", fmt.Errorf("WALSHIP_CACHE=%s: want an absolute path", dir)
		}
		return dir, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the cache directory (set WALSHIP_CACHE): %w", err)
	}
	return filepath.Join(dir, "walship"), nil
}

// binChecks remembers, per bin directory, whether its postgres runs for the
// server user, so that each process checks every directory once.
var binChecks sync.Map // bin dir -> func() error

// BinDir returns the directory holding initdb, pg_ctl and postgres of the
// given major version, after checking that its postgres runs as the user the
// servers will run as. The error says how to install what is missing.
func BinDir(major int) (string, error) {
	var dir, marker string
	switch major {
	case 15:
		dir = debianBinDir
	case 14, 16, 17, 18:
		cache, err := CacheDir()
		if err != nil {
			return "", err
		}
		root := filepath.Join(cache, "pg", strconv.Itoa(major))
		dir = filepath.Join(root, "package", "native", "bin")
		marker = filepath.Join(root, "installed")
	default:
		return "", fmt.Errorf("PostgreSQL %d: unsupported version, want one of %v", major, Versions())
	}
	check, _ := binChecks.LoadOrStore(dir, sync.OnceValue(func() error {
		return checkBinDir(major, dir, marker)
	}))
	if err := check.(func() error)(); err != nil {
		return "", err
	}
	return dir, nil
}

func checkBinDir(major int, dir, marker string) error {
	if marker != "" {
		if _, err := os.Stat(marker); err != nil {
			return fmt.Errorf("PostgreSQL %d is not installed (no %s): %s", major, marker, installHint)
		}
	}
	for _, name := range []string{"initdb", "postgres"} {
		if err := executable(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("PostgreSQL %d: %w: %s", major, err, installHint)
		}
	}
	cmd := exec.Command(filepath.Join(dir, "postgres"), "--version")
	if err := setCredential(cmd); err != nil {
		return err
	}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		if msg := strings.TrimSpace(string(out)); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return fmt.Errorf("PostgreSQL %d: run %s/postgres --version as %s, who must be able to reach it: %v: %s",
			major, dir, serverUserName(), err, installHint)
	}
	want := fmt.Sprintf("postgres (PostgreSQL) %d.", major)
	if !strings.HasPrefix(string(out), want) {
		return fmt.Errorf("PostgreSQL %d: %s/postgres --version says %q: %s",
			major, dir, strings.TrimSpace(string(out)), installHint)
	}
	return nil
}

// ClientBin returns the path of one of the PostgreSQL 15 client tools from
// Debian's packages: pg_waldump, pg_verifybackup, pgbench, pg_basebackup,
// pg_receivewal, pg_amcheck, psql and the others in the same directory.
func ClientBin(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("client tool %q: want a bare program name", name)
	}
	path := filepath.Join(debianBinDir, name)
	if err := executable(path); err != nil {
		return "", fmt.Errorf("client tool %s: %w: %s", name, err, installHint)
	}
	return path, nil
}

func executable(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s is missing", path)
	}
	if !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
