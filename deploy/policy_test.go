package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/scheduler"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/file"
	"github.com/walship/walship/storage/lease"
)

// The IAM policies are checked by running walship's own storage code (the
// leases, retention) against a store that refuses what a policy does not
// allow, as S3 would, on the keys walship's catalog names.

// errDenied is S3's AccessDenied.
var errDenied = errors.New("AccessDenied")

// policyStore is a file store behind an IAM policy, as S3 maps its calls
// to actions: Put and Create s3:PutObject, Get and Stat s3:GetObject, List
// s3:ListBucket (on the bucket), Delete s3:DeleteObject, Sweep
// s3:ListBucketMultipartUploads (on the bucket) and s3:AbortMultipartUpload.
type policyStore struct {
	inner          *file.Store
	policy         iamPolicy
	bucket, prefix string
	denied         []string
}

var (
	_ storage.Store   = (*policyStore)(nil)
	_ storage.Creator = (*policyStore)(nil)
	_ storage.Sweeper = (*policyStore)(nil)
)

func newPolicyStore(t *testing.T, policy string) *policyStore {
	t.Helper()
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bucket, prefix := repository(t)
	return &policyStore{inner: s, policy: readPolicy(t, policy), bucket: bucket, prefix: prefix}
}

func (p *policyStore) may(action, key string) error {
	res := "arn:aws:s3:::" + p.bucket
	if key != "" {
		res += "/" + p.prefix + "/" + key
	}
	if !p.policy.allows(action, res, nil) {
		p.denied = append(p.denied, action+" "+key)
		return fmt.Errorf("%s %s: %w", action, key, errDenied)
	}
	return nil
}

func (p *policyStore) Put(ctx context.Context, key string, r io.Reader) error {
	if err := p.may("s3:PutObject", key); err != nil {
		return err
	}
	return p.inner.Put(ctx, key, r)
}

func (p *policyStore) Create(ctx context.Context, key string, r io.Reader) error {
	if err := p.may("s3:PutObject", key); err != nil {
		return err
	}
	return p.inner.Create(ctx, key, r)
}

func (p *policyStore) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	if err := p.may("s3:GetObject", key); err != nil {
		return nil, err
	}
	return p.inner.Get(ctx, key, off)
}

func (p *policyStore) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := p.may("s3:GetObject", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	return p.inner.Stat(ctx, key)
}

func (p *policyStore) List(ctx context.Context, prefix string) iter.Seq2[storage.ObjectInfo, error] {
	if err := p.may("s3:ListBucket", ""); err != nil {
		return func(yield func(storage.ObjectInfo, error) bool) { yield(storage.ObjectInfo{}, err) }
	}
	return p.inner.List(ctx, prefix)
}

func (p *policyStore) Delete(ctx context.Context, key string) error {
	if err := p.may("s3:DeleteObject", key); err != nil {
		return err
	}
	return p.inner.Delete(ctx, key)
}

func (p *policyStore) Sweep(ctx context.Context, prefix string, cutoff time.Time, remove func(storage.Leftover) bool) error {
	if err := p.may("s3:ListBucketMultipartUploads", ""); err != nil {
		return err
	}
	var denied error
	err := p.inner.Sweep(ctx, prefix, cutoff, func(l storage.Leftover) bool {
		if denied != nil || !remove(l) {
			return false
		}
		denied = p.may("s3:AbortMultipartUpload", l.Key)
		return denied == nil
	})
	if denied != nil {
		return denied
	}
	return err
}

// leaveLeftover leaves what a write of key killed midway leaves in the
// file store under s, a day old.
func leaveLeftover(t *testing.T, s *policyStore, key string) {
	t.Helper()
	dir, name := path.Split(key)
	p := filepath.Join(s.inner.Root(), filepath.FromSlash(dir), "."+name+".tmp-1")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("cut short"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-25 * time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
}

// takeTwice takes the lease name, releases it, and takes it again: the
// second holder deletes the first generation, as after any restart.
func takeTwice(t *testing.T, s storage.Store, name string) error {
	t.Helper()
	ctx := context.Background()
	for range 2 {
		l, err := lease.Acquire(ctx, s, lease.Options{Name: name, TTL: time.Second, ClockSkew: time.Millisecond})
		if err != nil {
			return err
		}
		if err := l.Release(ctx); err != nil {
			return err
		}
	}
	return nil
}

const segSize = 16 << 20

func seg(tli wal.TimeLineID, no uint64) wal.Segment { return wal.Segment{TLI: tli, No: no} }

// repositoryKeys are keys of every kind walship writes, by kind.
func repositoryKeys() map[string]string {
	id := catalog.NewBackupID(time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC))
	return map[string]string{
		"segment":        catalog.SegmentKey(seg(1, 3), segSize),
		"piece":          catalog.PieceKey(seg(1, 4), segSize, 0, 0x2000),
		"partial":        catalog.PartialKey(seg(1, 5), segSize),
		"index":          catalog.IndexKey(seg(1, 3), segSize),
		"gap":            catalog.GapKey(seg(2, 9), segSize),
		"backup history": catalog.BackupKey(seg(1, 3), segSize, 0x28),
		"history":        catalog.HistoryKey(2),
		"walship.json":   catalog.MetaKey,
		"backup.json":    catalog.BackupMetaKey(id),
		"base.tar":       catalog.BackupObjectKey(id, "base.tar"),
		"archiver lease": lease.Key(7),
	}
}

func put(t *testing.T, s *policyStore, key string) {
	t.Helper()
	if err := s.inner.Put(context.Background(), key, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
}

// TestArchiverPolicyWorks runs what the archiver and backup do to the
// repository (write every kind of object, retire pieces, take over leases)
// under archiver.json, and checks that it cannot delete anything recovery
// needs.
func TestArchiverPolicyWorks(t *testing.T) {
	s := newPolicyStore(t, "archiver.json")
	ctx := context.Background()
	for _, name := range []string{"", archiver.BackupLease} {
		if err := takeTwice(t, s, name); err != nil {
			t.Errorf("lease %q under archiver.json: %v", name, err)
		}
	}
	// A refused delete of an old generation is only logged: look at the requests.
	if len(s.denied) > 0 {
		t.Errorf("under archiver.json the leases were refused %q", s.denied)
	}
	keys := repositoryKeys()
	for kind, key := range keys {
		if err := s.Put(ctx, key, strings.NewReader("x")); err != nil {
			t.Errorf("write a %s: %v", kind, err)
		}
		if _, err := s.Get(ctx, key, 0); err != nil {
			t.Errorf("read a %s: %v", kind, err)
		}
	}
	if err := s.Delete(ctx, keys["piece"]); err != nil {
		t.Errorf("retire a piece: %v", err)
	}
	if err := s.Delete(ctx, "check/probe-1"); err != nil {
		t.Errorf("walship check's probe: %v", err)
	}
	for _, kind := range []string{"segment", "partial", "index", "gap", "backup history", "history", "walship.json", "backup.json", "base.tar"} {
		if err := s.Delete(ctx, keys[kind]); !errors.Is(err, errDenied) {
			t.Errorf("the archiver deleted a %s (%s): %v; only the pruner may", kind, keys[kind], err)
		}
	}
}

// TestPrunerPolicyWorks runs retention under pruner.json: the backup lease,
// then every delete of a plan that removes backups, unfinished backups and
// WAL of every kind, and the sweep of what interrupted uploads left; and
// checks what the pruner cannot do.
func TestPrunerPolicyWorks(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	backup := func(daysAgo int, startSeg uint64) catalog.Backup {
		start := now.Add(-time.Duration(daysAgo) * 24 * time.Hour)
		return catalog.Backup{ID: catalog.NewBackupID(start), StartTime: start, StopTime: start.Add(time.Minute),
			StartLSN: wal.LSN(startSeg*segSize + 0x28), EndLSN: wal.LSN(startSeg*segSize + 0x1000), StartTLI: 1, EndTLI: 1,
			SegmentSize: segSize, Objects: []catalog.BackupObject{{Name: "base.tar"}, {Name: "backup_manifest"}}}
	}
	inv := scheduler.Inventory{SegmentSize: segSize, Backups: []catalog.Backup{backup(9, 2), backup(1, 20)},
		Unfinished: map[string][]storage.ObjectInfo{"20261101T000000.000Z": {{Key: "backups/20261101T000000.000Z/base.tar"}}}}
	for _, k := range []string{
		catalog.HistoryKey(2),
		catalog.SegmentKey(seg(1, 1), segSize), catalog.IndexKey(seg(1, 1), segSize),
		catalog.PieceKey(seg(1, 2), segSize, 0, 0x2000), catalog.PartialKey(seg(1, 3), segSize),
		catalog.GapKey(seg(1, 4), segSize), catalog.BackupKey(seg(1, 5), segSize, 0x28),
		catalog.SegmentKey(seg(1, 25), segSize),
	} {
		inv.WAL = append(inv.WAL, storage.ObjectInfo{Key: k})
	}
	plan, err := scheduler.PlanRetention(inv, scheduler.Policy{Keep: 1}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.DeleteKeys) < 9 {
		t.Fatalf("the plan deletes only %q; the test meant to delete a backup, an unfinished one and WAL of every kind", plan.DeleteKeys)
	}
	for _, policy := range []string{"pruner.json", "archiver.json"} {
		s := newPolicyStore(t, policy)
		for _, k := range plan.DeleteKeys {
			put(t, s, k)
		}
		keys := repositoryKeys()
		for _, kind := range []string{"base.tar", "segment"} {
			leaveLeftover(t, s, keys[kind])
		}
		repo := catalog.New(s, catalog.Options{})
		lerr := takeTwice(t, s, archiver.BackupLease)
		_, perr := scheduler.Prune(context.Background(), repo, plan, nil)
		sweep, serr := scheduler.PlanSweep(context.Background(), repo, time.Now().Add(-24*time.Hour), false)
		n := 0
		if serr == nil {
			n, serr = scheduler.Sweep(context.Background(), repo, sweep, nil)
		}
		switch {
		case policy == "pruner.json" && (lerr != nil || perr != nil || serr != nil || n != 2 || len(s.denied) > 0):
			t.Errorf("retention under pruner.json: lease %v, prune %v, sweep %d leftovers %v, refused %q", lerr, perr, n, serr, s.denied)
		case policy == "archiver.json" && (!errors.Is(perr, errDenied) || !errors.Is(serr, errDenied)):
			t.Errorf("retention under archiver.json: prune %v, sweep %v; want both refused", perr, serr)
		}
	}
	s := newPolicyStore(t, "pruner.json")
	ctx := context.Background()
	keys := repositoryKeys()
	for _, kind := range []string{"history", "walship.json", "archiver lease"} {
		if err := s.Delete(ctx, keys[kind]); !errors.Is(err, errDenied) {
			t.Errorf("the pruner deleted a %s: %v", kind, err)
		}
	}
	for kind, key := range keys {
		if err := s.Put(ctx, key, strings.NewReader("x")); !errors.Is(err, errDenied) {
			t.Errorf("the pruner wrote a %s: %v; it only deletes (and holds the backup lease)", kind, err)
		}
	}
}

// TestRestorePolicyOnlyReads checks that the restore role reads everything
// and writes nothing.
func TestRestorePolicyOnlyReads(t *testing.T) {
	p := readPolicy(t, "restore.json")
	for _, st := range p.Statement {
		for _, a := range st.Action {
			if !slices.Contains([]string{"s3:GetObject", "s3:ListBucket"}, a) {
				t.Errorf("restore.json grants %s; restore, replica, wal-fetch, list and verify only read", a)
			}
		}
	}
	s := newPolicyStore(t, "restore.json")
	ctx := context.Background()
	for kind, key := range repositoryKeys() {
		put(t, s, key)
		if _, err := s.Get(ctx, key, 0); err != nil {
			t.Errorf("read a %s: %v", kind, err)
		}
		if err := s.Put(ctx, key, strings.NewReader("y")); !errors.Is(err, errDenied) {
			t.Errorf("the restore role wrote a %s: %v", kind, err)
		}
		if err := s.Delete(ctx, key); !errors.Is(err, errDenied) {
			t.Errorf("the restore role deleted a %s: %v", kind, err)
		}
	}
	for _, err := range s.List(ctx, "wal/") {
		if err != nil {
			t.Errorf("list: %v", err)
		}
	}
	if err := takeTwice(t, newPolicyStore(t, "restore.json"), ""); !errors.Is(err, errDenied) {
		t.Errorf("the restore role took the archiver lease: %v", err)
	}
}
