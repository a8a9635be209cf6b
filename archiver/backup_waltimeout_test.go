package archiver

import (
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage/lease"
)

// TestBackupWALTimeout: while an archiver that ships nothing holds the
// repository's lease, a backup waits WALTimeout for the segment holding its
// end, then fails saying what is missing and what to check, and the backup
// never exists.
func TestBackupWALTimeout(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	held, err := lease.Acquire(t.Context(), repo.Store(), lease.Options{Holder: "a stalled archiver (test)", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release(t.Context())
	start := time.Now()
	_, err = Backup(t.Context(), repo, BackupConfig{ConnString: c.ConnString(), Fast: true, WALTimeout: 2 * time.Second, Log: testLogger(t)})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "is not in the repository after 2s") || !strings.Contains(err.Error(), "is the archiver running") {
		t.Fatalf("Backup with a stalled archiver = %v, want the WAL timeout's error", err)
	}
	if took < 2*time.Second || took > time.Minute {
		t.Errorf("the backup gave up after %s, want about its 2s WAL timeout", took)
	}
	l, err := repo.ListBackups(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Backups) != 0 {
		t.Errorf("a backup without its WAL is listed: %+v", l.Backups)
	}
}

// TestBackupAfterKilledArchiver: a backup that finds the lease of an
// archiver killed a moment before (held, not yet expired) ships its WAL
// itself once the lease has expired, instead of waiting for an archiver
// that will never store it.
func TestBackupAfterKilledArchiver(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	if _, err := lease.Acquire(t.Context(), repo.Store(), lease.Options{Holder: "a killed archiver (test)", TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	// Never renewed nor released, as a killed archiver leaves it.
	start := time.Now()
	b, err := Backup(t.Context(), repo, BackupConfig{ConnString: c.ConnString(), Fast: true, WALTimeout: time.Minute, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("Backup after a killed archiver: %v", err)
	}
	t.Logf("backup %s done in %s", b.ID, time.Since(start).Round(time.Millisecond))
	l, err := repo.ListBackups(t.Context())
	if err != nil || len(l.Backups) != 1 {
		t.Errorf("listing %+v, %v; want the backup", l.Backups, err)
	}
}
