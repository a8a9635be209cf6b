package archiver

import (
	"bytes"
	"fmt"
	"log/slog"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/progress"
)

// TestBackupProgress checks that a backup with a progress meter asks the
// server for its size estimate and counts every byte it stores, on
// PostgreSQL 14 (old option syntax) and 17. No archiver runs: on 14, whose
// slot cannot tell its position, the backup ships its WAL from its start.
func TestBackupProgress(t *testing.T) {
	for _, v := range []int{14, 17} {
		t.Run(fmt.Sprintf("pg%d", v), func(t *testing.T) {
			c := pgtest.Start(t, pgtest.Options{Version: v})
			c.Exec(t, "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
			var logs bytes.Buffer
			meter := progress.Start("backup", 0, &logs, slog.New(slog.NewTextHandler(&logs, nil)))
			b, err := Backup(t.Context(), fileRepo(t), BackupConfig{ConnString: c.ConnString(), Fast: true, Progress: meter, EstimateSize: true, Log: testLogger(t)})
			meter.Stop()
			if err != nil {
				t.Fatal(err)
			}
			// The server's estimate is the data directory's size, in kB;
			// what is streamed adds tar headers and the manifest.
			status := meter.Status()
			estimate := b.RawSize
			t.Logf("%s; backup.json: %d raw bytes", status, estimate)
			if !bytes.Contains([]byte(status), []byte(progress.Bytes(b.RawSize)+" of ")) {
				t.Errorf("status %q does not count the %d bytes stored", status, b.RawSize)
			}
			if bytes.Contains([]byte(status), []byte(" of 0 B")) || !bytes.Contains([]byte(status), []byte("%")) {
				t.Errorf("status %q has no estimated total", status)
			}
		})
	}
}
