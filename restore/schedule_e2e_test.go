package restore

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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
	run := walshipOn(t, bin, repoURL)
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

// TestScheduledBackupFails runs the archiver with a backup schedule while
// the repository refuses backups (its backups/ directory is read-only for
// the server user): each scheduled backup fails, is logged and counted,
// and runs again at the next time, while WAL goes on streaming into the
// repository; once backups/ is writable, the next one succeeds. `list`
// tells when the next backup is due.
func TestScheduledBackupFails(t *testing.T) {
	bin := clitest.Binary(t)
	repoDir := filepath.Join(pgtest.MkdirOwned(t), "repo")
	repoURL := "file://" + repoDir
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
	run := walshipOn(t, bin, repoURL)
	backups := filepath.Join(repoDir, "backups")
	if err := os.MkdirAll(backups, 0o755); err != nil {
		t.Fatal(err)
	}
	pgtest.Own(t, repoDir)
	if err := os.Chmod(backups, 0o555); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(pgtest.MkdirOwned(t), "archiver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	arch := run("archive", "--pg", c.ConnString(), "--backup-schedule", "@every 2s", "--backup-fast", "--metrics-addr", "127.0.0.1:0")
	arch.Stdout, arch.Stderr = logFile, logFile
	if err := arch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = arch.Process.Kill(); _ = arch.Wait() })
	logText := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	var metricsURL string
	addrRE := regexp.MustCompile(`serving /metrics.* addr=(\S+)`)
	waitFor(t, time.Minute, "the metrics address in the log", func() bool {
		if m := addrRE.FindStringSubmatch(logText()); m != nil {
			metricsURL = "http://" + m[1] + "/metrics"
		}
		return metricsURL != ""
	})
	if !regexp.MustCompile(`msg=scheduled job=backup next=\S+`).MatchString(logText()) {
		t.Errorf("the log does not say when the first backup runs:\n%s", lastLines(logText(), 20))
	}

	// Backups fail; WAL written meanwhile is stored all the same.
	waitFor(t, time.Minute, "two failed scheduled backups", func() bool {
		return strings.Count(logText(), `msg="scheduled job failed; it runs again at its next time" job=backup`) >= 2
	})
	if failed := regexp.MustCompile(`msg="scheduled job failed.*`).FindString(logText()); !strings.Contains(failed, "permission denied") {
		t.Errorf("the failure does not say why: %s", failed)
	}
	c.Exec(t, "INSERT INTO t SELECT g FROM generate_series(1, 100000) g")
	c.Exec(t, "SELECT pg_switch_wal()")
	flushed := c.Scalar(t, "SELECT pg_current_wal_flush_lsn()")
	waitFor(t, time.Minute, "WAL to be acknowledged while backups fail", func() bool {
		return c.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication WHERE application_name = 'walship'", flushed) == "t"
	})
	m := scrapeMetrics(t, metricsURL)
	if m[`walship_scheduled_failures_total{job="backup"}`] < 2 || m["walship_backup_failures_total"] < 2 || m["walship_backups_total"] != 0 || m["walship_streaming"] != 1 {
		t.Errorf("after failed backups: scheduled failures %v, backup failures %v, backups %v, streaming %v",
			m[`walship_scheduled_failures_total{job="backup"}`], m["walship_backup_failures_total"], m["walship_backups_total"], m["walship_streaming"])
	}

	// The repository takes backups again: the next scheduled one is done.
	if err := os.Chmod(backups, 0o755); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "a scheduled backup to succeed", func() bool {
		return strings.Contains(logText(), `msg="scheduled job done" job=backup`)
	})
	if m := scrapeMetrics(t, metricsURL); m["walship_backups_total"] < 1 {
		t.Errorf("walship_backups_total %v after a backup", m["walship_backups_total"])
	}
	_ = arch.Process.Signal(syscall.SIGTERM)
	if err := arch.Wait(); err != nil {
		t.Fatalf("archive: %v\n%s", err, lastLines(logText(), 30))
	}

	out, err := run("list", "--json", "--backup-schedule", "@daily").Output()
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		Backups    []struct{ ID string } `json:"backups"`
		NextBackup string                `json:"next_backup_due"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatal(err)
	}
	next, err := time.Parse(time.RFC3339, l.NextBackup)
	if len(l.Backups) == 0 || err != nil || !next.After(time.Now()) || next.After(time.Now().Add(24*time.Hour)) {
		t.Errorf("list --backup-schedule @daily: %d backups, next due %q (%v); want one tomorrow at the latest", len(l.Backups), l.NextBackup, err)
	}
	if out, err := run("list", "--backup-schedule", "@daily").Output(); err != nil || !strings.Contains(string(out), "next backup due "+l.NextBackup) {
		t.Errorf("list --backup-schedule @daily: %v\n%s", err, out)
	}
}

// scrapeMetrics reads Prometheus' text format from url: each sample by its
// name and labels, as printed.
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}
