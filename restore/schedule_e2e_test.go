package restore

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
)

// TestScheduledBackups runs the archiver with backup and prune schedules:
// backups are taken while WAL streams, pruning keeps two, and `backup
// --if-due` decides from the repository alone.
func TestScheduledBackups(t *testing.T) {
	bin := clitest.Binary(t)
	repoURL := "file://" + filepath.Join(pgtest.MkdirOwned(t), "repo")
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
	run := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"--repo", repoURL}, args...)...)
		cmd.Dir = "/"
		pgtest.RunAs(t, cmd)
		return cmd
	}
	logPath := filepath.Join(pgtest.MkdirOwned(t), "archiver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	arch := run("archive", "--pg", c.ConnString(), "--backup-schedule", "@every 2s", "--backup-fast",
		"--prune-schedule", "*/3 * * * * *", "--keep", "2")
	arch.Stdout, arch.Stderr = logFile, logFile
	if err := arch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(9 * time.Second)
	_ = arch.Process.Signal(syscall.SIGTERM)
	if err := arch.Wait(); err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("archive with schedules: %v\n%s", err, lastLines(string(b), 30))
	}
	logText, _ := os.ReadFile(logPath)
	for _, want := range []string{`msg=scheduled job=backup`, `msg=scheduled job=prune`, `msg="scheduled job done" job=backup`, `msg="scheduled job done" job=prune`} {
		if !strings.Contains(string(logText), want) {
			t.Errorf("archiver log lacks %q:\n%s", want, lastLines(string(logText), 30))
		}
	}
	count := func() int {
		out, err := run("list", "--json").Output()
		if err != nil {
			t.Fatal(err)
		}
		var l listingJSON
		if err := json.Unmarshal(out, &l); err != nil {
			t.Fatal(err)
		}
		return len(l.Backups)
	}
	n := count()
	if n < 2 || n > 4 {
		t.Errorf("%d backups after scheduled backups every 2s and pruning to 2 every 3s", n)
	}
	// Not due: the newest backup is seconds old and the schedule is daily.
	if out, err := run("backup", "--if-due", "--schedule", "@daily", "--fast", "--pg", c.ConnString()).Output(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("backup --if-due @daily: %v, printed %q; want nothing taken", err, out)
	}
	if got := count(); got != n {
		t.Errorf("backup --if-due took a backup that was not due: %d -> %d", n, got)
	}
	time.Sleep(1100 * time.Millisecond)
	if out, err := run("backup", "--if-due", "--schedule", "@every 1s", "--fast", "--pg", c.ConnString()).Output(); err != nil || strings.TrimSpace(string(out)) == "" {
		t.Errorf("backup --if-due @every 1s: %v, printed %q; want a backup", err, out)
	}
	if got := count(); got != n+1 {
		t.Errorf("after a due backup: %d backups, want %d", got, n+1)
	}
	if code := run("backup", "--if-due").Run(); code == nil {
		t.Error("--if-due without --schedule was accepted")
	}
}
