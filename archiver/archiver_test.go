package archiver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
	"github.com/walship/walship/storage/file"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Cleanup()
	miniotest.Cleanup()
	clitest.Cleanup()
	os.Exit(code)
}

func fileRepo(t *testing.T) *catalog.Repo { return fileRepoAt(t, filepath.Join(t.TempDir(), "repo")) }

func fileRepoAt(t testing.TB, dir string) *catalog.Repo {
	s, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return catalog.New(s, catalog.Options{Codec: codec.Options{Compression: codec.Zstd}})
}

func testConfig(t *testing.T, c *pgtest.Cluster) Config {
	return Config{
		ConnString:   c.ConnString(),
		SyncInterval: 50 * time.Millisecond,
		Log:          testLogger(t),
	}
}

// workload writes rows and switches segments so that WAL spans several.
func workload(t *testing.T, c *pgtest.Cluster, rows int) {
	c.Exec(t, "CREATE TABLE IF NOT EXISTS t (id serial PRIMARY KEY, v text)")
	for i := 0; i < rows; i += 1000 {
		c.Exec(t, "INSERT INTO t (v) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 1000) g")
	}
}

func flushLSN(t *testing.T, c *pgtest.Cluster) wal.LSN {
	lsn, err := wal.ParseLSN(c.Scalar(t, "SELECT pg_current_wal_flush_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// fetchRange writes the repository's complete segments of tli from first to
// last (inclusive) into a new directory, as wal-fetch would, and returns it.
func fetchRange(t *testing.T, repo *catalog.Repo, tli wal.TimeLineID, first, last uint64, segSize uint64) string {
	dir := pgtest.MkdirOwned(t)
	for no := first; no <= last; no++ {
		seg := wal.Segment{TLI: tli, No: no}
		b, err := repo.ReadAll(t.Context(), catalog.SegmentKey(seg, segSize), int64(segSize))
		if err != nil {
			t.Fatalf("segment %s: %v", seg.Name(segSize), err)
		}
		if uint64(len(b)) != segSize {
			t.Fatalf("segment %s holds %d bytes", seg.Name(segSize), len(b))
		}
		if err := os.WriteFile(filepath.Join(dir, seg.Name(segSize)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pgtest.Own(t, dir)
	return dir
}

// waldump runs Debian's pg_waldump (PostgreSQL 15) over [from, to) using the
// segments in dir, failing the test if it cannot read every record.
func waldump(t *testing.T, dir string, tli wal.TimeLineID, from, to wal.LSN) string {
	bin, err := pgtest.ClientBin("pg_waldump")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--path", dir, "--timeline", fmt.Sprint(tli), "--start", from.String(), "--end", to.String())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pg_waldump %s..%s: %v\n%s", from, to, err, out)
	}
	return string(out)
}

func segmentsIn(t *testing.T, repo *catalog.Repo, segSize uint64) (complete []wal.Segment, pieces []catalog.WALObject) {
	for oi, err := range repo.Store().List(t.Context(), "wal/") {
		if err != nil {
			t.Fatal(err)
		}
		o, err := catalog.ParseWALKey(oi.Key, segSize)
		if err != nil {
			t.Fatalf("stray key %s: %v", oi.Key, err)
		}
		switch o.Kind {
		case catalog.Segment:
			complete = append(complete, o.Segment)
		case catalog.Piece:
			pieces = append(pieces, o)
		}
	}
	return complete, pieces
}

// checkContinuous fails unless the complete segments are consecutive and the
// pieces continue the last one without a hole.
func checkContinuous(t *testing.T, complete []wal.Segment, pieces []catalog.WALObject) {
	t.Helper()
	for i := 1; i < len(complete); i++ {
		if complete[i].No != complete[i-1].No+1 {
			t.Fatalf("gap between segments %d and %d", complete[i-1].No, complete[i].No)
		}
	}
	var end uint32
	for i, p := range pieces {
		if len(complete) > 0 && p.Segment.No != complete[len(complete)-1].No+1 {
			t.Fatalf("piece %s is not of the segment after the last complete one", p.Key)
		}
		if p.Start != end {
			t.Fatalf("piece %d %s starts at %X, want %X", i, p.Key, p.Start, end)
		}
		end = p.End
	}
}

func TestUntilCaughtUp(t *testing.T) {
	for _, v := range pgtest.Versions() {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			c := pgtest.Start(t, pgtest.Options{Version: v})
			repo := fileRepo(t)
			// The first run creates the slot, which from then on keeps
			// the WAL that the next runs ship.
			if _, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
				t.Fatal(err)
			}
			workload(t, c, 6000)
			c.Exec(t, "SELECT pg_switch_wal()")
			workload(t, c, 4000)
			target := flushLSN(t, c)

			res, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if res.Durable < target {
				t.Fatalf("durable %s, want at least the flush position %s at start", res.Durable, target)
			}
			segSize := uint64(1 << 20)
			complete, pieces := segmentsIn(t, repo, segSize)
			if len(complete) < 3 {
				t.Fatalf("only %d complete segments", len(complete))
			}
			checkContinuous(t, complete, pieces)
			// The slot never runs ahead of the repository.
			slot, err := wal.ParseLSN(c.Scalar(t, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship'"))
			if err != nil {
				t.Fatal(err)
			}
			if slot > res.Durable {
				t.Errorf("slot restart_lsn %s is past the durable %s", slot, res.Durable)
			}
			if v == 15 {
				first, last := complete[0], complete[len(complete)-1]
				dir := fetchRange(t, repo, 1, first.No, last.No, segSize)
				out := waldump(t, dir, 1, first.Start(segSize), last.Start(segSize)+wal.LSN(segSize)-1)
				if strings.Contains(out, "error") {
					t.Errorf("pg_waldump: %s", out)
				}
			}
			// A second bounded run resumes where the first ended.
			workload(t, c, 1000)
			target = flushLSN(t, c)
			res2, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if res2.Durable < target {
				t.Fatalf("second run: durable %s, want %s", res2.Durable, target)
			}
			complete, pieces = segmentsIn(t, repo, segSize)
			checkContinuous(t, complete, pieces)
		})
	}
}

func TestStopShipsEverything(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	var res Result
	go func() {
		var err error
		res, err = Run(ctx, repo, testConfig(t, c))
		done <- err
	}()
	workload(t, c, 4000)
	time.Sleep(300 * time.Millisecond)
	target := flushLSN(t, c)
	time.Sleep(300 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res.Durable < target {
		t.Fatalf("after stop: durable %s, want %s", res.Durable, target)
	}
	complete, pieces := segmentsIn(t, repo, 1<<20)
	checkContinuous(t, complete, pieces)
	if len(pieces) == 0 {
		t.Error("no pieces for the filling segment")
	}
}

var _ storage.Store = (*file.Store)(nil)
