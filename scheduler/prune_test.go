package scheduler

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/file"
)

// TestSweep plans and sweeps the temporary files of a file repository:
// those last written before the cut-off go, younger ones stay, and so do
// those under backups/ while a backup runs.
func TestSweep(t *testing.T) {
	old := time.Now().Add(-48 * time.Hour)
	cutoff := time.Now().Add(-24 * time.Hour)
	for _, running := range []bool{false, true} {
		root := t.TempDir()
		s, err := file.New(root)
		if err != nil {
			t.Fatal(err)
		}
		temp := func(rel string, mtime time.Time) {
			p := filepath.Join(root, rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("cut short"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		temp("backups/20261101T030000.000Z/.base.1.tar.tmp-11", old)
		temp("wal/00000001/.000000010000000000000003.tmp-22", old)
		temp("wal/00000001/.000000010000000000000004.tmp-33", time.Now())
		temp("wal/00000001/.not-ours", old)
		temp("other-tool/.dump.tmp-55", old) // not where walship writes
		repo := catalog.New(s, catalog.Options{})

		plan, err := PlanSweep(t.Context(), repo, cutoff, running)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"backups/20261101T030000.000Z/base.1.tar", "wal/00000001/000000010000000000000003"}
		var wantKept []string
		if running {
			want, wantKept = want[1:], want[:1]
		}
		if got := leftoverKeys(plan.Sweep); !slices.Equal(got, want) {
			t.Errorf("backup running %v: plan sweeps %q, want %q", running, got, want)
		}
		if got := leftoverKeys(plan.Kept); !slices.Equal(got, wantKept) || (running && len(plan.Notes) == 0) {
			t.Errorf("backup running %v: plan keeps %q (notes %q), want %q", running, got, plan.Notes, wantKept)
		}
		// A leftover that appears after planning is not swept.
		temp("wal/00000001/.000000010000000000000005.tmp-44", old)
		n, err := Sweep(t.Context(), repo, plan, nil)
		if err != nil || n != len(want) {
			t.Fatalf("Sweep = %d, %v; want %d", n, err, len(want))
		}
		after, err := PlanSweep(t.Context(), repo, time.Now().Add(time.Hour), false)
		if err != nil {
			t.Fatal(err)
		}
		left := append(wantKept, "wal/00000001/000000010000000000000004", "wal/00000001/000000010000000000000005")
		slices.Sort(left)
		if got := leftoverKeys(after.Sweep); !slices.Equal(got, left) {
			t.Errorf("backup running %v: after the sweep %q remain, want %q", running, got, left)
		}
		if _, err := os.Stat(filepath.Join(root, "wal/00000001/.not-ours")); err != nil {
			t.Errorf("a dot-file walship did not write: %v", err)
		}
	}
}

func leftoverKeys(ls []storage.Leftover) []string {
	var keys []string
	for _, l := range ls {
		keys = append(keys, l.Key)
	}
	slices.Sort(keys)
	return keys
}
