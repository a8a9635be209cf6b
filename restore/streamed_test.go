package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/location"
)

// TestStreamedRecovery is the oracle for the streaming archiver: every
// segment `walship archive` ships replays in PostgreSQL, down to the tip that
// exists only as pieces of the segment that was filling when the primary
// died. A base backup taken while the archiver streams, restored with
// wal-fetch as restore_command and no recovery target, must come up as a
// primary with every row the archiver had acknowledged. In a copy of the
// scenario one complete segment is damaged in the repository: recovery must
// stop there, not end early and promote with fewer rows.
func TestStreamedRecovery(t *testing.T) {
	bin := clitest.Binary(t)
	srv := minioEnv(t)
	fileRepo := func(t *testing.T) string { return "file://" + filepath.Join(pgtest.MkdirOwned(t), "repo") }
	s3Repo := func(t *testing.T) string { return "s3://" + srv.Bucket(t) + "/streamed?endpoint=" + srv.URL() }
	for _, c := range []struct {
		name    string
		version int
		repo    func(*testing.T) string
	}{
		{"pg14-file", 14, fileRepo},
		{"pg15-file", 15, fileRepo},
		{"pg16-file", 16, fileRepo},
		{"pg16-s3", 16, s3Repo},
		{"pg17-file", 17, fileRepo},
		{"pg18-file", 18, fileRepo},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			streamedRecovery(t, bin, c.version, c.repo(t))
			t.Logf("%s took %v", c.name, time.Since(start).Round(time.Millisecond))
		})
	}
	t.Run("pg15-file-damaged", func(t *testing.T) {
		start := time.Now()
		damagedStreamedRecovery(t, bin, 15, fileRepo(t))
		t.Logf("pg15-file-damaged took %v", time.Since(start).Round(time.Millisecond))
	})
}

// streamed is what one run of the streaming scenario leaves behind: a dead
// primary, a stopped archiver and a base backup.
type streamed struct {
	repo        string
	store       storage.Store
	backup      string  // the base backup's data directory, owned by the server user
	backupStart string  // the segment of the backup's redo point, from backup_label
	afterBackup wal.LSN // where the primary was writing once the backup had ended
	rows        string  // count(*) of the table once writing stopped
	flushed     wal.LSN // the primary's flush position then, which the archiver acknowledged
	tip         wal.Segment
}

// streamScenario streams a PostgreSQL cluster's WAL into repo with `walship
// archive`, takes a base backup while it streams, writes rows over several
// segments with a segment switch in the middle but none at the end, waits
// until the archiver has acknowledged everything flushed, then kills the
// primary with SIGKILL and stops the archiver with SIGTERM.
func streamScenario(t *testing.T, bin string, version int, repo string) streamed {
	ctx := context.Background()
	c := pgtest.Start(t, pgtest.Options{Version: version})
	a := startArchiver(t, bin, repo, c)
	waitFor(t, 30*time.Second, "streaming archiver", func() bool {
		a.check(t)
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
	})

	s := streamed{repo: repo, backup: baseBackup(t, c)}
	s.afterBackup = parseLSN(t, c.Scalar(t, "SELECT pg_current_wal_lsn()"))
	s.backupStart = backupStartSegment(t, s.backup)
	c.Exec(t, "CREATE TABLE streamed (id int PRIMARY KEY, v text)")
	c.Exec(t, "INSERT INTO streamed SELECT g, md5(g::text) FROM generate_series(1, 15000) g")
	c.Exec(t, "SELECT pg_switch_wal()")
	c.Exec(t, "INSERT INTO streamed SELECT g, md5(g::text) FROM generate_series(15001, 30000) g")
	s.rows = c.Scalar(t, "SELECT count(*) FROM streamed")
	s.flushed = parseLSN(t, c.Scalar(t, "SELECT pg_current_wal_flush_lsn()"))
	// The segment holding the last byte flushed.
	s.tip = wal.SegmentOf(1, s.flushed-1, segSize)
	if s.tip.No <= wal.SegmentOf(1, s.afterBackup, segSize).No+1 {
		t.Fatalf("the rows span too little WAL (%s to %s) for the test", s.afterBackup, s.flushed)
	}
	waitStart := time.Now()
	waitFor(t, 30*time.Second, "acknowledgement of "+s.flushed.String(), func() bool {
		a.check(t)
		return c.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication", s.flushed.String()) == "t"
	})
	ackWait := time.Since(waitStart)

	c.Kill(t)
	loc, err := location.Parse(repo)
	if err != nil {
		t.Fatal(err)
	}
	if s.store, err = location.Open(ctx, loc); err != nil {
		t.Fatal(err)
	}
	// The point of the test: at the disaster, the WAL up to the flush
	// position lies in pieces of a segment the archiver never completed.
	if _, err := s.store.Stat(ctx, catalog.SegmentKey(s.tip, segSize)); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("stat %s: %v; want the primary's last segment still filling, stored only as pieces", catalog.SegmentKey(s.tip, segSize), err)
	}
	n, end := piecesOf(t, s.store, s.tip)
	if n == 0 || s.tip.Start(segSize)+wal.LSN(end) < s.flushed {
		t.Fatalf("at the kill %s holds %d pieces, contiguous to offset %d; want them to hold everything to %s",
			catalog.PiecePrefix(s.tip, segSize), n, end, s.flushed)
	}
	t.Logf("backup ended before %s; %s rows to %s, acknowledged %v after writing stopped; the primary died with %s in %d pieces to offset %d",
		s.afterBackup, s.rows, s.flushed, ackWait.Round(time.Millisecond), s.tip.Name(segSize), n, end)
	a.stop(t)
	return s
}

// streamedRecovery restores the scenario's base backup from the streamed
// archive and checks that recovery replays to the end, tip included, and
// promotes with every row.
func streamedRecovery(t *testing.T, bin string, version int, repo string) {
	s := streamScenario(t, bin, version, repo)
	r := pgtest.StartDataDir(t, s.backup, pgtest.Options{Version: version, Conf: recoveryConf(t, bin, s)})
	waitFor(t, 60*time.Second, "promotion", func() bool { return r.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
	if got := r.Scalar(t, "SELECT count(*) FROM streamed"); got != s.rows {
		t.Errorf("restored %s rows, want %s: recovery did not replay everything the archiver acknowledged", got, s.rows)
	}
	if replayed := parseLSN(t, r.Scalar(t, "SELECT pg_last_wal_replay_lsn()")); replayed < s.flushed {
		t.Errorf("recovery replayed to %s, want at least %s, which the archiver acknowledged", replayed, s.flushed)
	}
	if tli := r.Scalar(t, "SELECT timeline_id FROM pg_control_checkpoint()"); tli != "2" {
		t.Errorf("restored timeline %s, want 2 after promotion", tli)
	}
	b, err := os.ReadFile(r.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	serverLog := string(b)
	tip := s.tip.Name(segSize)
	for _, want := range []string{
		`restored log file "` + s.backupStart + `" from archive`,
		`restored log file "` + tip + `" from archive`,
	} {
		if !strings.Contains(serverLog, want) {
			t.Errorf("the restored server's log does not say %s:\n%s", want, lastLines(serverLog, 40))
		}
	}
	// restore_command's stderr goes to the server log: wal-fetch says it
	// served the tip from its pieces.
	if !hasLine(serverLog, "fetched the unfinished segment from its pieces", tip) {
		t.Errorf("wal-fetch did not log serving %s from its pieces:\n%s", tip, lastLines(serverLog, 40))
	}
}

// damagedStreamedRecovery damages one complete segment of the scenario's
// archive, after the point where the restored backup is consistent, and
// checks that wal-fetch exits 126 and that PostgreSQL then stops recovery
// with a FATAL error instead of ending it there and promoting.
func damagedStreamedRecovery(t *testing.T, bin string, version int, repo string) {
	ctx := context.Background()
	s := streamScenario(t, bin, version, repo)
	damaged := wal.Segment{TLI: 1, No: s.tip.No - 1}
	if damaged.Start(segSize) < s.afterBackup {
		t.Fatalf("segment %s is not wholly after the backup's end (%s)", damaged.Name(segSize), s.afterBackup)
	}
	key := catalog.SegmentKey(damaged, segSize)
	info, err := s.store.Stat(ctx, key)
	if err != nil {
		t.Fatalf("stat %s: %v; want the segment before the tip complete in the repository", key, err)
	}
	flipByte(t, s.store, key, int(info.Size/2))
	// The store wrote the object as us; the server user runs wal-fetch.
	pgtest.Own(t, strings.TrimPrefix(repo, "file://"))

	name := damaged.Name(segSize)
	fetch := exec.Command(bin, "--repo", repo, "wal-fetch", name, filepath.Join(t.TempDir(), name))
	out, err := fetch.CombinedOutput()
	if code := fetch.ProcessState.ExitCode(); code != 126 || !strings.Contains(string(out), "corrupt") {
		t.Errorf("wal-fetch %s of the damaged object: %v, exit %d, want 126 and the damage named:\n%s", name, err, code, out)
	}

	logPath, exitErr := runRecovery(t, version, s.backup, recoveryConf(t, bin, s))
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	serverLog := string(b)
	if exitErr == nil {
		t.Errorf("the restored server exited 0, want a failure; log:\n%s", lastLines(serverLog, 40))
	}
	// PostgreSQL words exit status 126 "command not executable".
	for _, want := range []string{
		`FATAL:  could not restore file "` + name + `" from archive: command not executable`,
		"shutting down due to startup process failure",
	} {
		if !strings.Contains(serverLog, want) {
			t.Errorf("the restored server's log does not say %s:\n%s", want, lastLines(serverLog, 40))
		}
	}
	if !hasLine(serverLog, "walship:", key, "corrupt") {
		t.Errorf("wal-fetch did not log that %s is corrupt:\n%s", key, lastLines(serverLog, 40))
	}
	for _, never := range []string{"archive recovery complete", "selected new timeline ID", "database system is ready to accept connections"} {
		if strings.Contains(serverLog, never) {
			t.Errorf("the restored server's log says %q: recovery ended at the damaged segment instead of stopping:\n%s", never, lastLines(serverLog, 40))
		}
	}
	// The cluster left behind still needs archive recovery.
	wantArchiveRecovery(t, s.backup)
}

// recoveryConf writes recovery.signal into the scenario's backup and returns
// the settings that recover it to the end of the archive with wal-fetch.
func recoveryConf(t *testing.T, bin string, s streamed) []string {
	if err := os.WriteFile(filepath.Join(s.backup, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Own(t, s.backup)
	return []string{
		fmt.Sprintf(`restore_command = '"%s" --repo "%s" wal-fetch "%%f" "%%p"'`, bin, s.repo),
		"recovery_target_timeline = 'latest'",
		"recovery_target_action = 'promote'",
	}
}

// runRecovery runs PostgreSQL on dataDir, with conf appended to its
// postgresql.conf and no TCP listener, until it exits; it is expected to
// stop on its own. pgtest.StartDataDir is for servers that come up. It
// returns the server log and the postmaster's exit.
func runRecovery(t *testing.T, version int, dataDir string, conf []string) (logPath string, exit error) {
	binDir, err := pgtest.BinDir(version)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\n" + strings.Join(conf, "\n") + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dir := pgtest.MkdirOwned(t) // the socket
	logPath = filepath.Join(t.TempDir(), "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(binDir, "postgres"), "-D", dataDir,
		"-c", "listen_addresses=", "-c", "unix_socket_directories="+dir)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(name, "PG") && !strings.HasPrefix(name, "LC_") && name != "LANG" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	pgtest.RunAs(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return logPath, err
	case <-time.After(60 * time.Second):
		// Immediate shutdown of the postmaster we started, and its group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGQUIT)
		<-done
		b, _ := os.ReadFile(logPath)
		t.Fatalf("the restored server still ran after 60s; want it stopped by the failed restore_command:\n%s", lastLines(string(b), 40))
		return "", nil
	}
}

// archiverProcess is a `walship archive` process.
type archiverProcess struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has exited and was reaped
	err  error         // from cmd.Wait, once done is closed
}

// startArchiver starts `walship archive` against c, streaming into repo, as
// the server user (so that the server user's wal-fetch can read a file
// repository). It is killed when the test ends if still running.
func startArchiver(t *testing.T, bin, repo string, c *pgtest.Cluster) *archiverProcess {
	a := &archiverProcess{log: filepath.Join(t.TempDir(), "archiver.log"), done: make(chan struct{})}
	logFile, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	a.cmd = exec.Command(bin, "--repo", repo, "archive", "--pg", c.ConnString(), "--sync-interval", "100ms")
	a.cmd.Dir = "/"
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	pgtest.RunAs(t, a.cmd)
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			_ = a.cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(a.log)
			t.Logf("archiver log, last lines:\n%s", lastLines(string(b), 30))
		}
	})
	return a
}

// check fails the test if the archiver has exited.
func (a *archiverProcess) check(t *testing.T) {
	t.Helper()
	select {
	case <-a.done:
		b, _ := os.ReadFile(a.log)
		t.Fatalf("walship archive exited (%v):\n%s", a.err, lastLines(string(b), 30))
	default:
	}
}

// stop sends SIGTERM and expects the archiver to exit 0.
func (a *archiverProcess) stop(t *testing.T) {
	t.Helper()
	a.check(t)
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("walship archive did not stop within 30s of SIGTERM")
	}
	if a.err != nil {
		b, _ := os.ReadFile(a.log)
		t.Fatalf("walship archive after SIGTERM: %v, want exit 0:\n%s", a.err, lastLines(string(b), 30))
	}
}

// piecesOf returns how many pieces the store holds of seg and where their
// run from offset 0 ends.
func piecesOf(t *testing.T, s storage.Store, seg wal.Segment) (n int, end uint32) {
	t.Helper()
	// Keys list in order of start, then end.
	for oi, err := range s.List(context.Background(), catalog.PiecePrefix(seg, segSize)) {
		if err != nil {
			t.Fatal(err)
		}
		p, err := catalog.ParseWALKey(oi.Key, segSize)
		if err != nil || p.Kind != catalog.Piece {
			t.Fatalf("unexpected key %s among the pieces: %v", oi.Key, err)
		}
		n++
		if p.Start <= end {
			end = max(end, p.End)
		}
	}
	return n, end
}

// backupStartSegment returns the segment that backup_label names as the
// backup's start: "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)".
func backupStartSegment(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "backup_label"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if _, file, ok := strings.Cut(line, "START WAL LOCATION: "); ok {
			if _, name, ok := strings.Cut(file, "(file "); ok && len(name) >= 24 {
				return name[:24]
			}
		}
	}
	t.Fatalf("backup_label names no start segment:\n%s", b)
	return ""
}

func parseLSN(t *testing.T, s string) wal.LSN {
	t.Helper()
	lsn, err := wal.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// hasLine reports whether one line of text contains all of subs.
func hasLine(text string, subs ...string) bool {
	for line := range strings.Lines(text) {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			return true
		}
	}
	return false
}

// wantArchiveRecovery fails t unless pg_controldata says the cluster in dir
// is in archive recovery: started again, it would recover, not come up as
// a primary with less than was archived.
func wantArchiveRecovery(t *testing.T, dir string) {
	t.Helper()
	ctl, err := pgtest.ClientBin("pg_controldata")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ctl, dir)
	cmd.Dir = "/"
	pgtest.RunAs(t, cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pg_controldata %s: %v\n%s", dir, err, out)
	}
	if !hasLine(string(out), "Database cluster state:", "in archive recovery") {
		t.Errorf("pg_controldata of %s does not say it is in archive recovery:\n%s", dir, out)
	}
}
