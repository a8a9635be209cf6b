package archiver

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// TestSameAsReceivewal streams the same WAL with walship and with
// PostgreSQL's own pg_receivewal: every complete segment both hold is
// byte-for-byte the same.
func TestSameAsReceivewal(t *testing.T) {
	const segSize = 1 << 20
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "SELECT pg_create_physical_replication_slot('recv', true)")
	repo := fileRepo(t)
	cfg := Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)}
	if _, err := Run(t.Context(), repo, cfg); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		workload(t, c, 3000)
		c.Exec(t, "SELECT pg_switch_wal()")
	}
	workload(t, c, 1000)
	target := flushLSN(t, c)
	if _, err := Run(t.Context(), repo, cfg); err != nil {
		t.Fatal(err)
	}
	// pg_receivewal notices --endpos only when WAL beyond it arrives.
	workload(t, c, 100)
	bin, err := pgtest.ClientBin("pg_receivewal")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "-d", c.ConnString(), "-S", "recv", "-D", dir, "--endpos", target.String(), "--no-loop", "--status-interval", "1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_receivewal: %v\n%s", err, out)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	compared := 0
	for _, e := range entries {
		f, err := wal.ParseFileName(e.Name(), segSize)
		if err != nil || f.Kind != wal.KindSegment {
			continue // .partial: pg_receivewal's unfinished tip
		}
		theirs, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		ours, err := repo.ReadAll(t.Context(), catalog.SegmentKey(f.Segment, segSize), segSize)
		if err != nil {
			t.Errorf("segment %s: pg_receivewal has it, the repository: %v", e.Name(), err)
			continue
		}
		if !bytes.Equal(ours, theirs) {
			t.Errorf("segment %s differs from pg_receivewal's", e.Name())
		}
		compared++
	}
	if compared < 4 {
		t.Fatalf("compared only %d segments", compared)
	}
	t.Logf("%d segments identical to pg_receivewal's", compared)
}
