package archiver

import (
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// TestBackupWithoutArchiver backs up into a fresh repository with no
// archiver running: the backup creates the slot first and ships the WAL it
// needs itself, from its start to its end.
func TestBackupWithoutArchiver(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Version: 16})
	c.Exec(t, "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
	repo := fileRepo(t)
	b, err := Backup(t.Context(), repo, BackupConfig{ConnString: c.ConnString(), Fast: true, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := repo.ReadBackup(t.Context(), b.ID)
	if err != nil || got.EndLSN != b.EndLSN || len(got.Objects) != 2 {
		t.Fatalf("ReadBackup = %+v, %v", got, err)
	}
	for no := uint64(b.StartLSN) / b.SegmentSize; no <= uint64(b.EndLSN-1)/b.SegmentSize; no++ {
		key := catalog.SegmentKey(wal.Segment{TLI: 1, No: no}, b.SegmentSize)
		if _, err := repo.Store().Stat(t.Context(), key); err != nil {
			t.Errorf("the backup's WAL %s is missing: %v", key, err)
		}
	}
	if c.Scalar(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walship'") != "1" {
		t.Error("no slot was made for the backup's WAL")
	}
}
