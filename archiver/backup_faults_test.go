package archiver

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// backupFailStore fails writes of base backup objects after some bytes, as
// a store that breaks midway would.
type backupFailStore struct {
	storage.Store
	after int64
	err   error
}

func (f backupFailStore) Create(ctx context.Context, key string, r io.Reader) error {
	if strings.HasPrefix(key, catalog.BackupsPrefix) && strings.HasSuffix(key, "base.tar") {
		return f.Store.(storage.Creator).Create(ctx, key, io.MultiReader(io.LimitReader(r, f.after), errAfter{f.err}))
	}
	return f.Store.(storage.Creator).Create(ctx, key, r)
}

type errAfter struct{ err error }

func (e errAfter) Read([]byte) (int, error) { return 0, e.err }

// TestBackupInterrupted: a storage error and a dropped connection midway
// each fail the backup and leave no backup.json, so the backup never
// exists; prune's listing sees its leftovers as unfinished.
func TestBackupInterrupted(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 20) AS v FROM generate_series(1, 50000) g")
	base := fileRepo(t)
	boom := errors.New("storage broke (test)")

	t.Run("storage error", func(t *testing.T) {
		repo := catalog.New(backupFailStore{Store: base.Store(), after: 1 << 20, err: boom}, catalog.Options{})
		_, err := Backup(t.Context(), repo, BackupConfig{ConnString: c.ConnString(), Fast: true, Log: testLogger(t)})
		if !errors.Is(err, boom) {
			t.Fatalf("Backup = %v, want the storage error", err)
		}
		checkNoBackup(t, base)
	})
	t.Run("dropped connection", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			_, err := Backup(t.Context(), base, BackupConfig{ConnString: c.ConnString(), Fast: true, Log: testLogger(t), MaxRate: 1024})
			done <- err
		}()
		waitFor(t, "the backup's walsender", func() bool {
			return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship_backup' AND state = 'backup'") == "1"
		})
		time.Sleep(200 * time.Millisecond)
		c.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'walship_backup'")
		if err := <-done; err == nil {
			t.Fatal("a backup whose connection was dropped succeeded")
		}
		checkNoBackup(t, base)
	})
}

func checkNoBackup(t *testing.T, repo *catalog.Repo) {
	t.Helper()
	l, err := repo.ListBackups(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Backups) != 0 || len(l.Invalid) != 0 {
		t.Errorf("a failed backup is visible: %+v", l.Backups)
	}
}
