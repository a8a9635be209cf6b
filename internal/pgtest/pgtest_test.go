package pgtest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestVersions(t *testing.T) {
	for _, v := range Versions() {
		t.Run(strconv.Itoa(v), func(t *testing.T) {
			t.Parallel()
			c := Start(t, Options{Version: v})
			if got := c.Version(); got != v {
				t.Errorf("Version() = %d, want %d", got, v)
			}
			num, err := strconv.Atoi(c.Scalar(t, "SHOW server_version_num"))
			if err != nil {
				t.Fatal(err)
			}
			if got := num / 10000; got != v {
				t.Errorf("server_version_num %d: major %d, want %d", num, got, v)
			}
			for setting, want := range map[string]string{
				"data_checksums":   "on",
				"wal_segment_size": "1MB",
				"wal_level":        "replica",
				"fsync":            "off",
			} {
				if got := c.Scalar(t, "SHOW "+setting); got != want {
					t.Errorf("%s = %q, want %q", setting, got, want)
				}
			}
		})
	}
}

func TestWALSegSize16(t *testing.T) {
	c := Start(t, Options{Version: 15, WALSegSizeMB: 16})
	if got := c.Scalar(t, "SHOW wal_segment_size"); got != "16MB" {
		t.Errorf("wal_segment_size = %q, want 16MB", got)
	}
}

func TestFreshSystemIdentifier(t *testing.T) {
	const q = "SELECT system_identifier FROM pg_control_system()"
	a := Start(t, Options{}).Scalar(t, q)
	b := Start(t, Options{}).Scalar(t, q)
	fresh := Start(t, Options{Fresh: true}).Scalar(t, q)
	if a != b {
		t.Errorf("template copies: system identifiers %s and %s, want one template", a, b)
	}
	if fresh == a {
		t.Errorf("Fresh cluster shares the template's system identifier %s", a)
	}
}

func TestConfAndReplication(t *testing.T) {
	c := Start(t, Options{Conf: []string{"work_mem = '7MB'", "wal_keep_size = 32"}})
	if got := c.Scalar(t, "SHOW work_mem"); got != "7MB" {
		t.Errorf("work_mem = %q, want 7MB from Options.Conf", got)
	}
	if got := c.Scalar(t, "SELECT $1::int + 1", 41); got != "42" {
		t.Errorf("Scalar with an argument = %q, want 42", got)
	}
	if got := c.Scalar(t, "SELECT NULL"); got != "" {
		t.Errorf("Scalar(NULL) = %q, want empty", got)
	}

	conn, err := pgconn.Connect(context.Background(), c.ReplConnString())
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(context.Background(), "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
	sysid := c.Scalar(t, "SELECT system_identifier FROM pg_control_system()")
	if got := string(results[0].Rows[0][0]); got != sysid {
		t.Errorf("IDENTIFY_SYSTEM systemid = %s, want %s", got, sysid)
	}
}

func TestKillStart(t *testing.T) {
	c := Start(t, Options{})
	c.Exec(t, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
	c.Kill(t)
	if _, err := pgconn.Connect(context.Background(), c.ConnString()); err == nil {
		t.Fatal("connected after Kill")
	}
	c.Start(t)
	c.Exec(t, "INSERT INTO t VALUES (2)")
	c.Stop(t)
	c.Start(t)
	if got := c.Scalar(t, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t"); got != "1,2" {
		t.Errorf("rows after Kill, Start, Stop, Start = %q, want 1,2", got)
	}
	if log, err := os.ReadFile(c.LogPath()); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(string(log), "was not properly shut down") {
		t.Errorf("server log shows no crash recovery after Kill:\n%s", log)
	}
}

// TestPortTaken restarts a server on the port of another: the start must
// fail as errPortTaken, which a first start answers with another port,
// rather than take the other server for its own.
func TestPortTaken(t *testing.T) {
	a := Start(t, Options{})
	b := Start(t, Options{})
	b.Stop(t)
	port := b.port
	b.port = a.Port()
	if err := b.start(); !errors.Is(err, errPortTaken) {
		t.Errorf("start on a taken port: error %v, want errPortTaken", err)
	}
	b.port = port
	b.Start(t)
}

func TestCleanup(t *testing.T) {
	var pid int
	var dir string
	t.Run("cluster", func(t *testing.T) {
		c := Start(t, Options{})
		pid = c.srv.cmd.Process.Pid
		dir = c.dir
		c.Exec(t, "SELECT 1")
	})
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("postmaster %d still exists after its test ended", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s: %v, want it removed", dir, err)
	}
}

// TestRestoreAndStartDataDir takes a backup with pg_basebackup as the server
// user into a MkdirOwned directory, checks it with pg_verifybackup, and starts
// a second server on it.
func TestRestoreAndStartDataDir(t *testing.T) {
	src := Start(t, Options{})
	src.Exec(t, "CREATE TABLE t AS SELECT 7 AS v")

	target := filepath.Join(MkdirOwned(t), "data")
	basebackup, err := ClientBin("pg_basebackup")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(basebackup, "-D", target, "-d", src.ReplConnString(), "-c", "fast", "-X", "stream")
	cmd.Dir = "/"
	RunAs(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	verify, err := ClientBin("pg_verifybackup")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(verify, target).CombinedOutput(); err != nil {
		t.Fatalf("pg_verifybackup: %v\n%s", err, out)
	}

	restored := StartDataDir(t, target, Options{Conf: []string{"work_mem = '3MB'"}})
	if restored.Port() == src.Port() {
		t.Errorf("restored server shares port %d with its source", src.Port())
	}
	if got := restored.Scalar(t, "SELECT v FROM t"); got != "7" {
		t.Errorf("restored t.v = %q, want 7", got)
	}
	if got := restored.Scalar(t, "SHOW work_mem"); got != "3MB" {
		t.Errorf("restored work_mem = %q, want 3MB", got)
	}
}

func TestOwn(t *testing.T) {
	dir := MkdirOwned(t)
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	Own(t, dir)
	u, err := lookupServerUser()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, file} {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid != u.uid || st.Gid != u.gid {
			t.Errorf("%s owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, u.uid, u.gid)
		}
	}
	if info, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	} else if info.Mode().Perm() != 0o700 {
		t.Errorf("MkdirOwned mode %v, want 0700", info.Mode().Perm())
	}
}

func TestBinDirErrors(t *testing.T) {
	t.Setenv("WALSHIP_CACHE", t.TempDir())
	_, err := BinDir(16)
	if err == nil || !strings.Contains(err.Error(), "install-postgres.sh") {
		t.Errorf("BinDir(16) with an empty cache: error %v, want one naming scripts/install-postgres.sh", err)
	}
	if _, err := BinDir(13); err == nil {
		t.Error("BinDir(13): no error, want unsupported version")
	}
	if _, err := ClientBin("../bin/sh"); err == nil {
		t.Error("ClientBin with a path: no error")
	}
	if _, err := ClientBin("no_such_tool"); err == nil || !strings.Contains(err.Error(), "install-postgres.sh") {
		t.Errorf("ClientBin(no_such_tool): error %v, want one naming scripts/install-postgres.sh", err)
	}
}
