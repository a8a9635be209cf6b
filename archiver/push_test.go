package archiver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
	"github.com/walship/walship/storage/file"
)

const (
	pushTestSegSize = 1 << 20
	pushTestSysID   = 7441337033001234567
	pushTestPage    = 8192
)

// pushTestSegment builds a segment as PostgreSQL 15 lays it out: a long
// header on the first page, short headers with each page's address on the
// others, pseudo-random records from seed, and zero pages from page zeroFrom
// on (as after an XLOG_SWITCH record) when it is positive.
func pushTestSegment(sysID uint64, seg wal.Segment, seed uint64, zeroFrom int) []byte {
	b := make([]byte, pushTestSegSize)
	rng := rand.New(rand.NewPCG(seed, 1))
	for p := 0; p < pushTestSegSize/pushTestPage; p++ {
		page := b[p*pushTestPage : (p+1)*pushTestPage]
		if zeroFrom > 0 && p >= zeroFrom {
			continue
		}
		binary.LittleEndian.PutUint16(page[0:], 0xD110)
		binary.LittleEndian.PutUint32(page[4:], uint32(seg.TLI))
		binary.LittleEndian.PutUint64(page[8:], uint64(seg.Start(pushTestSegSize))+uint64(p*pushTestPage))
		body := page[24:]
		if p == 0 {
			binary.LittleEndian.PutUint16(page[2:], pushLongHeaderFlag)
			binary.LittleEndian.PutUint64(page[24:], sysID)
			binary.LittleEndian.PutUint32(page[32:], pushTestSegSize)
			binary.LittleEndian.PutUint32(page[36:], pushTestPage)
			body = page[40:]
		}
		for i := range body {
			body[i] = byte(rng.Uint32())
		}
	}
	return b
}

// pushTestRepo is an empty repository in a file store, and its store.
func pushTestRepo(t *testing.T) (*catalog.Repo, storage.Store) {
	s, err := file.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	return catalog.New(s, catalog.Options{Codec: codec.Options{Compression: codec.Zstd}}), s
}

// pushTestFile writes b to a file called name in a new directory.
func pushTestFile(t *testing.T, name string, b []byte) string {
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pushTestLog collects log records as text.
type pushTestLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *pushTestLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *pushTestLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *pushTestLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func pushTestPayload(t *testing.T, repo *catalog.Repo, key string) []byte {
	t.Helper()
	b, err := repo.ReadAll(context.Background(), key, 2*pushTestSegSize)
	if err != nil {
		t.Fatalf("read back %s: %v", key, err)
	}
	return b
}

func TestPushSegment(t *testing.T) {
	ctx := context.Background()
	repo, _ := pushTestRepo(t)
	seg := wal.Segment{TLI: 1, No: 0x123}
	name := seg.Name(pushTestSegSize)
	data := pushTestSegment(pushTestSysID, seg, 1, 100)
	path := pushTestFile(t, name, data)
	var log pushTestLog

	// The first push creates walship.json from the segment's header.
	if err := Push(ctx, repo, path, log.logger()); err != nil {
		t.Fatal(err)
	}
	meta, err := repo.ReadMeta(ctx)
	if err != nil || meta.SystemID != "7441337033001234567" || meta.SegmentSize != pushTestSegSize {
		t.Fatalf("walship.json = %+v, %v", meta, err)
	}
	key := catalog.SegmentKey(seg, pushTestSegSize)
	if got := pushTestPayload(t, repo, key); !bytes.Equal(got, data) {
		t.Fatalf("stored payload differs from the segment")
	}
	// Again, as PostgreSQL does after a crash: success, logged.
	if err := Push(ctx, repo, path, log.logger()); err != nil {
		t.Fatalf("second push of the same segment: %v", err)
	}
	if !strings.Contains(log.String(), "already archived with the same content") {
		t.Errorf("log lacks the identical re-archive:\n%s", log.String())
	}
	// Other WAL under the same name: refused, the stored object untouched.
	other := pushTestSegment(pushTestSysID, seg, 2, 100)
	err = Push(ctx, repo, pushTestFile(t, name, other), nil)
	if err == nil || !strings.Contains(err.Error(), "already holds different WAL under "+key) || !strings.Contains(err.Error(), "split brain") {
		t.Fatalf("push of different WAL under the same name = %v", err)
	}
	if got := pushTestPayload(t, repo, key); !bytes.Equal(got, data) {
		t.Fatalf("a refused push changed the stored segment")
	}
	// A different segment of the same cluster.
	seg2 := wal.Segment{TLI: 1, No: 0x124}
	if err := Push(ctx, repo, pushTestFile(t, seg2.Name(pushTestSegSize), pushTestSegment(pushTestSysID, seg2, 3, 0)), nil); err != nil {
		t.Fatal(err)
	}
}

func TestPushRefuses(t *testing.T) {
	ctx := context.Background()
	seg := wal.Segment{TLI: 2, No: 0x40}
	name := seg.Name(pushTestSegSize)
	good := pushTestSegment(pushTestSysID, seg, 1, 0)
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	random := make([]byte, pushTestSegSize)
	for i := range random {
		random[i] = byte(i*7 + i>>9)
	}
	cases := []struct {
		name, file string
		data       []byte
		haveMeta   bool
		want       string
	}{
		{"garbage", name, random, false, "page magic"},
		{"garbage with meta", name, random, true, "page magic"},
		{"zeros", name, make([]byte, pushTestSegSize), false, "page magic 0"},
		{"short", name, good[:pushTestSegSize-pushTestPage], true, "but a segment is 1048576 bytes"},
		{"long", name, append(bytes.Clone(good), 0), true, "but a segment is 1048576 bytes"},
		{"tiny", name, good[:30], false, "too short for a WAL page header"},
		{"renamed", wal.Segment{TLI: 2, No: 0x41}.Name(pushTestSegSize), good, true, "its first page is at 0/4000000, but"},
		{"other cluster", name, pushTestSegment(pushTestSysID+1, seg, 1, 0), true, "a second cluster is archiving here"},
		{"other segment size", name, with(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[32:], 2<<20); return b }), true, "2097152-byte segments"},
		{"bad segment size", name, with(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[32:], 3<<20); return b }), false, "segment size 3145728"},
		{"unknown magic", name, with(func(b []byte) []byte { binary.LittleEndian.PutUint16(b, 0xD0FF); return b }), false, "page magic 0xd0ff"},
		{"no long header", name, with(func(b []byte) []byte { b[2] = 0; return b }), false, "no long header"},
		{"bad page size", name, with(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[36:], 1000); return b }), false, "page size 1000"},
		{"no system identifier", name, with(func(b []byte) []byte { clear(b[24:32]); return b }), false, "system identifier is 0"},
		{"stale page", name, with(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[5*pushTestPage+8:], 0x1000); return b }), true, "offset 40960 is for 0/1000"},
		{"mixed magic", name, with(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[9*pushTestPage:], 0xD113); return b }), true, "magic 0xd113"},
		{"page after zero pages", name, with(func(b []byte) []byte { clear(b[3*pushTestPage : 4*pushTestPage]); return b }), true, "header after zero pages"},
		{"not a WAL name", "pg_control", good, true, `file name "pg_control"`},
		{"compressed name", name + ".zst", good, true, "unknown suffix"},
		{"lower case", strings.ToLower("0000000A0000000000000040"), good, true, "upper-case"},
		{"backup before any segment", name + ".00000028.backup", []byte("START WAL LOCATION: 0/40000028 (file " + name + ")\n"), false, "archive a WAL segment first"},
		{"not a backup file", name + ".00000028.backup", []byte("hello\n"), true, "not a backup history file"},
		{"partial too long", name + ".partial", append(bytes.Clone(good), 1), true, "more than a 1048576-byte segment"},
		{"history garbage", "00000002.history", []byte("not a history file\n"), false, "not a timeline history file"},
		{"empty history", "00000002.history", []byte("# nothing\n"), false, "no timeline switch"},
		{"history of a later timeline", "00000002.history", []byte("1\t0/3000000\tno recovery target specified\n2\t0/4000000\tx\n"), false, "not an ancestor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo, s := pushTestRepo(t)
			if c.haveMeta {
				if _, err := repo.Init(ctx, catalog.Meta{SystemID: "7441337033001234567", SegmentSize: pushTestSegSize}); err != nil {
					t.Fatal(err)
				}
			}
			err := Push(ctx, repo, pushTestFile(t, c.file, c.data), nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Push = %v, want an error saying %q", err, c.want)
			}
			// Nothing but walship.json (if it was there) in the repository.
			for oi, err := range s.List(ctx, "") {
				if err != nil {
					t.Fatal(err)
				}
				if oi.Key != catalog.MetaKey || !c.haveMeta {
					t.Errorf("a refused push left %s in the repository", oi.Key)
				}
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		repo, _ := pushTestRepo(t)
		if err := Push(ctx, repo, filepath.Join(t.TempDir(), name), nil); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Push of a missing file = %v", err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		repo, _ := pushTestRepo(t)
		dir := filepath.Join(t.TempDir(), name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := Push(ctx, repo, dir, nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("Push of a directory = %v", err)
		}
	})
}

func TestPushHistory(t *testing.T) {
	ctx := context.Background()
	repo, _ := pushTestRepo(t)
	history := []byte("1\t0/3000000\tno recovery target specified\n")
	path := pushTestFile(t, "00000002.history", history)
	// Before any segment: no walship.json needed.
	if err := Push(ctx, repo, path, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.ReadMeta(ctx); !errors.Is(err, catalog.ErrNoMeta) {
		t.Errorf("a history file created walship.json: %v", err)
	}
	if got := pushTestPayload(t, repo, catalog.HistoryKey(2)); !bytes.Equal(got, history) {
		t.Errorf("stored history = %q", got)
	}
	if err := Push(ctx, repo, path, nil); err != nil {
		t.Errorf("second push of the same history: %v", err)
	}
	// Never overwritten, not even by a valid history of the same timeline.
	other := []byte("1\t0/5000000\tno recovery target specified\n")
	err := Push(ctx, repo, pushTestFile(t, "00000002.history", other), nil)
	if err == nil || !strings.Contains(err.Error(), "already holds different WAL under wal/00000002.history") {
		t.Errorf("push of another history for timeline 2 = %v", err)
	}
	if got := pushTestPayload(t, repo, catalog.HistoryKey(2)); !bytes.Equal(got, history) {
		t.Errorf("history was overwritten: %q", got)
	}
}

func TestPushPartialAndBackup(t *testing.T) {
	ctx := context.Background()
	repo, _ := pushTestRepo(t)
	seg := wal.Segment{TLI: 1, No: 7}
	name := seg.Name(pushTestSegSize)
	// A .partial as the streaming archiver would have it: shorter than a
	// segment, stored as it is. It may be the first file a repository sees.
	partial := pushTestSegment(pushTestSysID, seg, 5, 0)[:300000]
	if err := Push(ctx, repo, pushTestFile(t, name+".partial", partial), nil); err != nil {
		t.Fatal(err)
	}
	if got := pushTestPayload(t, repo, catalog.PartialKey(seg, pushTestSegSize)); !bytes.Equal(got, partial) {
		t.Errorf("stored partial is %d bytes, want the %d pushed", len(got), len(partial))
	}
	if _, err := repo.ReadMeta(ctx); err != nil {
		t.Errorf("walship.json after a partial: %v", err)
	}
	// The complete segment of the same name is another object.
	if err := Push(ctx, repo, pushTestFile(t, name, pushTestSegment(pushTestSysID, seg, 6, 0)), nil); err != nil {
		t.Fatal(err)
	}
	backup := []byte("START WAL LOCATION: 0/700028 (file " + name + ")\nSTOP WAL LOCATION: 0/700100 (file " + name + ")\n")
	if err := Push(ctx, repo, pushTestFile(t, name+".00000028.backup", backup), nil); err != nil {
		t.Fatal(err)
	}
	key := catalog.BackupKey(seg, pushTestSegSize, 0x28)
	if got := pushTestPayload(t, repo, key); !bytes.Equal(got, backup) {
		t.Errorf("stored backup file = %q", got)
	}
	if o, err := catalog.ParseWALKey(key, pushTestSegSize); err != nil || o.Kind != catalog.BackupHistory {
		t.Errorf("ParseWALKey(%s) = %+v, %v", key, o, err)
	}
}

// TestPushConcurrent races pushers: of identical files all succeed, of
// different files under one name exactly one does.
func TestPushConcurrent(t *testing.T) {
	ctx := context.Background()
	seg := wal.Segment{TLI: 1, No: 9}
	name := seg.Name(pushTestSegSize)
	for _, same := range []bool{true, false} {
		t.Run(fmt.Sprintf("same=%v", same), func(t *testing.T) {
			repo, _ := pushTestRepo(t)
			const n = 6
			paths := make([]string, n)
			for i := range paths {
				seed := uint64(1)
				if !same {
					seed = uint64(i + 1)
				}
				paths[i] = pushTestFile(t, name, pushTestSegment(pushTestSysID, seg, seed, 0))
			}
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range paths {
				wg.Go(func() { errs[i] = Push(ctx, repo, paths[i], nil) })
			}
			wg.Wait()
			ok := 0
			for _, err := range errs {
				switch {
				case err == nil:
					ok++
				case !strings.Contains(err.Error(), "already holds different WAL"):
					t.Errorf("unexpected error: %v", err)
				}
			}
			if want := map[bool]int{true: n, false: 1}[same]; ok != want {
				t.Errorf("%d pushes succeeded, want %d (errors %v)", ok, want, errs)
			}
		})
	}
}

// TestPushRealSegment pushes segments that PostgreSQL wrote, and refuses one
// of another cluster.
func TestPushRealSegment(t *testing.T) {
	ctx := context.Background()
	repo, _ := pushTestRepo(t)
	copySegment := func(c *pgtest.Cluster) string {
		c.Exec(t, "CREATE TABLE IF NOT EXISTS push_t AS SELECT g FROM generate_series(1, 10000) g")
		name := c.Scalar(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
		c.Exec(t, "SELECT pg_switch_wal()")
		b, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", name))
		if err != nil {
			t.Fatal(err)
		}
		return pushTestFile(t, name, b)
	}
	c := pgtest.Start(t, pgtest.Options{})
	path := copySegment(c)
	for range 2 {
		if err := Push(ctx, repo, path, nil); err != nil {
			t.Fatalf("push %s: %v", filepath.Base(path), err)
		}
	}
	meta, err := repo.ReadMeta(ctx)
	if want := c.Scalar(t, "SELECT system_identifier FROM pg_control_system()"); err != nil || meta.SystemID != want {
		t.Errorf("walship.json = %+v, %v; want system identifier %s", meta, err, want)
	}
	other := pgtest.Start(t, pgtest.Options{Fresh: true})
	err = Push(ctx, repo, copySegment(other), nil)
	if err == nil || !strings.Contains(err.Error(), "a second cluster is archiving here") {
		t.Errorf("push of another cluster's segment = %v", err)
	}
}
