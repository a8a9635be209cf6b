package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/storage"
)

func sampleBackup(id string) Backup {
	return Backup{
		ID: id, Label: "walship " + id, SystemID: "7441337033001234567", PGVersion: 170010, SegmentSize: 16 * mb,
		StartLSN: 0x3000028, EndLSN: 0x3000138, StartTLI: 1, EndTLI: 1,
		StartTime: time.Date(2026, 11, 28, 10, 15, 0, 0, time.UTC), StopTime: time.Date(2026, 11, 28, 10, 16, 0, 0, time.UTC),
		RawSize: 100, StoredSize: 40, Compression: "zstd",
		Objects: []BackupObject{{Name: "base.tar", Size: 90, StoredSize: 35, SHA256: strings.Repeat("ab", 32)}, {Name: "backup_manifest", Size: 10, StoredSize: 5}},
	}
}

func TestBackupIDs(t *testing.T) {
	a := NewBackupID(time.Date(2026, 11, 28, 9, 59, 59, 999e6, time.UTC))
	b := NewBackupID(time.Date(2026, 11, 28, 10, 0, 0, 0, time.FixedZone("x", 3600))) // 09:00 UTC
	c := NewBackupID(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
	if a != "20261128T095959.999Z" || !(b < a && a < c) {
		t.Errorf("ids %s %s %s do not sort by time", a, b, c)
	}
	for _, bad := range []string{"", "latest", "20261128T095959Z", "../x", "20261128T095959.999Z/"} {
		if ValidBackupID(bad) == nil {
			t.Errorf("ValidBackupID(%q) accepted", bad)
		}
	}
}

func TestBackupJSON(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	want := sampleBackup("20261128T101500.000Z")
	if err := r.WriteBackup(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadBackup(ctx, want.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.StartLSN != want.StartLSN || got.EndLSN != want.EndLSN || got.Label != want.Label || len(got.Objects) != 2 || !got.StartTime.Equal(want.StartTime) {
		t.Errorf("round trip: got %+v", got)
	}
	if err := r.WriteBackup(ctx, want); !errors.Is(err, storage.ErrExist) {
		t.Errorf("second WriteBackup = %v, want ErrExist", err)
	}
	raw, _ := r.ReadAll(ctx, BackupMetaKey(want.ID), 1<<20)
	if !bytes.Contains(raw, []byte(`"start_lsn": "0/3000028"`)) {
		t.Errorf("backup.json does not spell LSNs as PostgreSQL does:\n%s", raw)
	}
	bad := want
	bad.ID, bad.EndLSN = "20261128T101600.000Z", 1
	if err := r.WriteBackup(ctx, bad); err == nil {
		t.Error("a backup ending before it starts was written")
	}
	for name, body := range map[string]string{
		"not json":  "{",
		"newer":     `{"format": 9, "id": "20261128T101500.000Z", "start_lsn": "0/1", "end_lsn": "0/2", "start_timeline": 1, "end_timeline": 1, "wal_segment_size": 16777216}`,
		"bad lsn":   `{"format": 1, "id": "20261128T101500.000Z", "start_lsn": "x", "end_lsn": "0/2", "start_timeline": 1, "end_timeline": 1, "wal_segment_size": 16777216}`,
		"bad name":  `{"format": 1, "id": "20261128T101500.000Z", "start_lsn": "0/1", "end_lsn": "0/2", "start_timeline": 1, "end_timeline": 1, "wal_segment_size": 16777216, "objects": [{"name": "../x"}]}`,
		"bad id":    `{"format": 1, "id": "yesterday", "start_lsn": "0/1", "end_lsn": "0/2", "start_timeline": 1, "end_timeline": 1, "wal_segment_size": 16777216}`,
		"no format": `{"id": "20261128T101500.000Z", "start_lsn": "0/1", "end_lsn": "0/2", "start_timeline": 1, "end_timeline": 1, "wal_segment_size": 16777216}`,
	} {
		if _, err := ParseBackup([]byte(body)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestListBackups(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	for _, id := range []string{"20261128T111500.000Z", "20261128T101500.000Z"} {
		if _, err := r.Put(ctx, BackupObjectKey(id, "base.tar"), strings.NewReader("tar")); err != nil {
			t.Fatal(err)
		}
		if err := r.WriteBackup(ctx, sampleBackup(id)); err != nil {
			t.Fatal(err)
		}
	}
	// An interrupted backup: objects but no backup.json.
	if _, err := r.Put(ctx, BackupObjectKey("20261128T121500.000Z", "base.tar"), strings.NewReader("half")); err != nil {
		t.Fatal(err)
	}
	// A damaged backup.json.
	if err := r.Store().Put(ctx, BackupMetaKey("20261128T131500.000Z"), strings.NewReader("garbage")); err != nil {
		t.Fatal(err)
	}
	l, err := r.ListBackups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Backups) != 2 || l.Backups[0].ID != "20261128T101500.000Z" || l.Backups[1].ID != "20261128T111500.000Z" {
		t.Errorf("backups %+v, want the two complete ones oldest first", l.Backups)
	}
	if len(l.Orphans["20261128T121500.000Z"]) != 1 || len(l.Orphans) != 1 {
		t.Errorf("orphans %v", l.Orphans)
	}
	if l.Invalid["20261128T131500.000Z"] == nil || len(l.Invalid) != 1 {
		t.Errorf("invalid %v", l.Invalid)
	}
}

// TestBackupParts checks archives in parts: written as format 2 (format 1
// without parts, for older walships), grouped in order, and refused when a
// part is missing or repeated.
func TestBackupParts(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	one := sampleBackup("20261128T101500.000Z")
	parted := sampleBackup("20261128T101600.000Z")
	parted.Objects = []BackupObject{
		{Name: "backup_manifest"},
		{Name: PartName("16384.tar", 1), OID: 16384, Location: "/ts", Part: 1},
		{Name: PartName("base.tar", 1), Part: 1},
		{Name: "base.tar"},
		{Name: "16384.tar", OID: 16384, Location: "/ts"},
		{Name: PartName("base.tar", 2), Part: 2},
	}
	for _, b := range []Backup{one, parted} {
		if err := r.WriteBackup(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	for id, format := range map[string]string{one.ID: `"format": 1`, parted.ID: `"format": 2`} {
		if raw, _ := r.ReadAll(ctx, BackupMetaKey(id), 1<<20); !bytes.Contains(raw, []byte(format)) {
			t.Errorf("backup %s: want %s:\n%s", id, format, raw)
		}
	}
	got, err := r.ReadBackup(ctx, parted.ID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, parts := range got.Archives() {
		var ns []string
		for _, o := range parts {
			ns = append(ns, o.Name)
		}
		names = append(names, strings.Join(ns, ","))
	}
	if strings.Join(names, " ") != "base.tar,base.1.tar,base.2.tar 16384.tar,16384.1.tar" {
		t.Errorf("Archives = %v", names)
	}
	for _, objs := range [][]BackupObject{
		{{Name: "base.tar"}, {Name: "base.2.tar", Part: 2}},
		{{Name: "base.tar"}, {Name: "base.1.tar", Part: 1}, {Name: "base.1b.tar", Part: 1}},
		{{Name: "base.1.tar", Part: 1}},
		{{Name: "base.tar"}, {Name: "backup_manifest", Part: 1}},
	} {
		b := parted
		b.ID, b.Objects = "20261128T101700.000Z", objs
		if err := r.WriteBackup(ctx, b); err == nil {
			t.Errorf("WriteBackup with objects %+v accepted", objs)
		}
	}
}

// failingGets fails every Get of a key holding match with err, as a store
// whose connection breaks does.
type failingGets struct {
	storage.Store
	match string
	err   error
}

func (s failingGets) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	if strings.Contains(key, s.match) {
		return nil, s.err
	}
	return s.Store.Get(ctx, key, off)
}

// TestListBackupsReadFails: a backup.json that cannot be read for a reason
// other than its contents fails the listing, so that restore and prune never
// plan as if the backup were not there; one pruned since the listing leaves
// its other objects as unfinished; a directory that is not a backup id is
// listed as invalid.
func TestListBackupsReadFails(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	id := "20261128T111500.000Z"
	if err := r.WriteBackup(ctx, sampleBackup(id)); err != nil {
		t.Fatal(err)
	}
	broken := fmt.Errorf("read tcp: %w", io.ErrUnexpectedEOF)
	l, err := New(failingGets{r.Store(), "backup.json", broken}, Options{}).ListBackups(ctx)
	if !errors.Is(err, broken) {
		t.Errorf("a backup.json read that fails: listing %+v, error %v; want the read's error", l, err)
	}
	l, err = New(failingGets{r.Store(), "backup.json", storage.ErrNotExist}, Options{}).ListBackups(ctx)
	if err != nil || len(l.Backups)+len(l.Invalid) != 0 || len(l.Orphans[id]) != 1 {
		t.Errorf("a backup.json removed since the listing: %+v, %v; want what was listed of it as unfinished", l, err)
	}
	// A directory under backups/ that is not a backup id is reported, not
	// fatal to the listing.
	if err := r.Store().Put(ctx, "backups/tmp/backup.json", strings.NewReader("{}")); err != nil {
		t.Fatal(err)
	}
	if l, err := r.ListBackups(ctx); err != nil || l.Invalid["tmp"] == nil || !errors.Is(l.Invalid["tmp"], ErrInvalidBackup) {
		t.Errorf("backups/tmp/backup.json: %+v, %v; want it listed as invalid", l, err)
	}
}

// TestNextBackupID: a new backup's id is its start time unless a backup in
// the repository, finished or not, already has that id or a later one (a
// clock behind another's): then it follows the latest.
func TestNextBackupID(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	now := time.Date(2026, 11, 28, 10, 15, 0, 0, time.UTC)
	if id, err := r.NextBackupID(ctx, now); err != nil || id != "20261128T101500.000Z" {
		t.Fatalf("empty repository: %q, %v", id, err)
	}
	if err := r.WriteBackup(ctx, sampleBackup("20261128T090000.000Z")); err != nil {
		t.Fatal(err)
	}
	if id, err := r.NextBackupID(ctx, now); err != nil || id != "20261128T101500.000Z" {
		t.Errorf("after an older backup: %q, %v", id, err)
	}
	// An unfinished backup from a host whose clock is ahead.
	if _, err := r.Put(ctx, BackupObjectKey("20261128T111500.250Z", "base.tar"), strings.NewReader("half")); err != nil {
		t.Fatal(err)
	}
	if id, err := r.NextBackupID(ctx, now); err != nil || id != "20261128T111500.251Z" {
		t.Errorf("after a later unfinished backup: %q, %v; want the id after it", id, err)
	}
	if err := r.WriteBackup(ctx, sampleBackup("20261128T101500.000Z")); err != nil {
		t.Fatal(err)
	}
	if id, err := r.NextBackupID(ctx, now.Add(2*time.Hour)); err != nil || id != "20261128T121500.000Z" {
		t.Errorf("a clock ahead of every id: %q, %v", id, err)
	}
}
