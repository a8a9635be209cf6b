package pgtest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serverUser is who the servers run as: postgres when we are root, since
// PostgreSQL refuses to run as root, and ourselves otherwise (switch false).
type serverUser struct {
	uid, gid uint32
	switchTo bool
}

var lookupServerUser = sync.OnceValues(func() (serverUser, error) {
	if os.Geteuid() != 0 {
		return serverUser{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return serverUser{}, fmt.Errorf("look up the postgres user, which runs the servers when tests run as root: %w: %s", err, installHint)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return serverUser{}, fmt.Errorf("postgres user: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return serverUser{}, fmt.Errorf("postgres user: gid %q: %w", u.Gid, err)
	}
	return serverUser{uid: uint32(uid), gid: uint32(gid), switchTo: true}, nil
})

func serverUserName() string {
	if os.Geteuid() == 0 {
		return "user postgres"
	}
	return "uid " + strconv.Itoa(os.Geteuid())
}

// setCredential makes cmd run as the server user.
func setCredential(cmd *exec.Cmd) error {
	u, err := lookupServerUser()
	if err != nil {
		return err
	}
	if !u.switchTo {
		return nil
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Groups is empty, not nil, to drop root's supplementary groups.
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}
	return nil
}

// RunAs makes cmd run as the user the servers run as (postgres when the test
// runs as root), for programs that refuse root or must own what they write:
// postgres, initdb, pg_resetwal, or pg_basebackup into a directory a server
// will use. It keeps cmd's other SysProcAttr fields. Set cmd.Dir to a
// directory that user can enter; the test's working directory may not be one.
func RunAs(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if err := setCredential(cmd); err != nil {
		t.Fatal(err)
	}
}

// Own hands path, and everything under it, to the server user, for trees a
// test wrote as root (a restore, say) that a server or RunAs command will use.
// It does nothing when the test does not run as root.
func Own(t testing.TB, path string) {
	t.Helper()
	u, err := lookupServerUser()
	if err != nil {
		t.Fatal(err)
	}
	if err := chownTree(path, u); err != nil {
		t.Fatal(err)
	}
}

func chownTree(path string, u serverUser) error {
	if !u.switchTo {
		return nil
	}
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, int(u.uid), int(u.gid)); err != nil {
			return fmt.Errorf("hand %s to the postgres user: %w", p, err)
		}
		return nil
	})
}

// MkdirOwned returns a new empty directory, mode 0700, owned by the server
// user, for a server to use as a data directory (a restore target, say). It is
// removed when the test ends.
func MkdirOwned(t testing.TB) string {
	t.Helper()
	dir, err := mkdirOwned("d")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A process the test started may still be finishing in it (a
		// restore_command's prefetcher): try again for a while.
		var err error
		for range 50 {
			if err = os.RemoveAll(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("remove %s: %v", dir, err)
	})
	return dir
}

// mkdirOwned makes a new directory under the process directory, owned by the
// server user and mode 0700, named prefix plus a random suffix.
func mkdirOwned(prefix string) (string, error) {
	root, err := processDir()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(root, prefix)
	if err != nil {
		return "", fmt.Errorf("make a directory for a test server: %w", err)
	}
	u, err := lookupServerUser()
	if err == nil {
		err = chownTree(dir, u)
	}
	if err != nil {
		return "", errors.Join(err, os.RemoveAll(dir))
	}
	return dir, nil
}

const processDirPrefix = "pgtest-"

// processDir is this test process's directory for everything pgtest makes,
// owned by the server user, mode 0700. It is short, since a Unix socket's path
// must fit in about 100 bytes. Making it first removes the directories of
// test processes that no longer exist.
var processDir = sync.OnceValues(func() (string, error) {
	u, err := lookupServerUser()
	if err != nil {
		return "", err
	}
	parent := processParent()
	removeStaleProcessDirs(parent)
	dir := filepath.Join(parent, processDirPrefix+strconv.Itoa(os.Getpid()))
	// A directory with our pid is left by an earlier process that had it.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("remove stale %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("make the test servers' directory: %w", err)
	}
	if err := chownTree(dir, u); err != nil {
		return "", err
	}
	return dir, nil
})

// removeStaleProcessDirs removes best-effort the directories of pgtest
// processes that are gone; their servers died with them (Pdeathsig).
func removeStaleProcessDirs(parent string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), processDirPrefix))
		if !e.IsDir() || !strings.HasPrefix(e.Name(), processDirPrefix) || err != nil || pid <= 0 {
			continue
		}
		if pid == os.Getpid() || alive(pid) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(parent, e.Name()))
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// serverEnv is the environment of the servers and initdb: ours without the
// libpq and locale variables, which would change what they do, and with the C
// locale.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG") || strings.HasPrefix(name, "LC_") || name == "LANG" || name == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// Cleanup removes this process's directory, templates included; call it from
// TestMain after m.Run (or use Main), once every cluster is gone, so that a
// test run leaves nothing behind.
func Cleanup() {
	_ = os.RemoveAll(filepath.Join(processParent(), processDirPrefix+strconv.Itoa(os.Getpid())))
}

// Main runs the tests, then Cleanup: os.Exit(pgtest.Main(m)) in TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	Cleanup()
	return code
}

// processParent is where the process directories live.
func processParent() string {
	if parent := os.TempDir(); len(parent) <= 40 {
		return parent
	}
	return "/tmp"
}
