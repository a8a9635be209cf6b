package pgtest

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// baseConf is appended to every cluster's postgresql.conf. The settings that
// belong to one running instance (port, listen_addresses,
// unix_socket_directories) are given on the postgres command line instead, so
// that a copy of the data directory (a backup) does not carry them.
const baseConf = `
# pgtest
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# Tests kill processes, not the operating system.
fsync = off
`

// hbaConf trusts every local connection, plain and replication.
const hbaConf = `# pgtest: trust everything local
local   all           all                 trust
local   replication   all                 trust
host    all           all   127.0.0.1/32  trust
host    replication   all   127.0.0.1/32  trust
`

// initCluster runs initdb into dataDir, as the server user, and writes the
// configuration every cluster shares.
func initCluster(binDir string, version, segMB int, dataDir string) error {
	cmd := exec.Command(filepath.Join(binDir, "initdb"),
		"--pgdata="+dataDir,
		"--username=postgres",
		"--auth=trust",
		"--data-checksums",
		"--no-sync",
		"--wal-segsize="+strconv.Itoa(segMB),
		"--locale=C",
		"--encoding=UTF8",
	)
	cmd.Dir = filepath.Dir(dataDir)
	cmd.Env = serverEnv()
	if err := setCredential(cmd); err != nil {
		return err
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb PostgreSQL %d into %s: %v\n%s", version, dataDir, err, tail(out, 40))
	}
	if err := appendFile(filepath.Join(dataDir, "postgresql.conf"), baseConf); err != nil {
		return err
	}
	return writeFile(filepath.Join(dataDir, "pg_hba.conf"), hbaConf)
}

type templateKey struct{ version, segMB int }

var templates sync.Map // templateKey -> func() (string, error)

// template returns the data directory of this process's pristine cluster of
// the given version and segment size, making it on first use. Callers copy
// it and must not change it.
func template(binDir string, version, segMB int) (string, error) {
	once, _ := templates.LoadOrStore(templateKey{version, segMB}, sync.OnceValues(func() (string, error) {
		dir, err := mkdirOwned(fmt.Sprintf("tmpl-%d-%d-", version, segMB))
		if err != nil {
			return "", err
		}
		dataDir := filepath.Join(dir, "data")
		if err := initCluster(binDir, version, segMB, dataDir); err != nil {
			return "", err
		}
		return dataDir, nil
	}))
	return once.(func() (string, error))()
}

// copyTree copies the directory src to dst, which must not exist, keeping
// modes and giving everything to the server user.
func copyTree(src, dst string) error {
	u, err := lookupServerUser()
	if err != nil {
		return err
	}
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			if err := os.Mkdir(target, mode.Perm()); err != nil {
				return err
			}
		case mode.IsRegular():
			if err := copyFile(path, target, mode.Perm()); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unexpected file type %v", path, mode.Type())
		}
		if u.switchTo {
			if err := os.Lchown(target, int(u.uid), int(u.gid)); err != nil {
				return err
			}
		}
		if info.Mode()&fs.ModeSymlink == 0 {
			// Mkdir and OpenFile apply the umask.
			return os.Chmod(target, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// appendFile appends text to the file at path, which must exist.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("append to %s: %w", path, err)
	}
	return nil
}

// writeFile replaces the content of the file at path, which must exist,
// keeping its owner and mode.
func writeFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// tail returns about the last n lines of b.
func tail(b []byte, n int) string {
	const maxBytes = 8 << 10
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
