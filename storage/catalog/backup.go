package catalog

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/codec"
)

// BackupsPrefix is the common prefix of every base backup's objects.
const BackupsPrefix = "backups/"

// BackupFormat is the newest backup.json format this walship writes and
// reads. Format 2 adds archives stored in several parts; a backup whose
// archives are single objects is written as format 1, which older walships
// read.
const BackupFormat = 2

// BackupObjectKey is the key of one object (an archive, the manifest) of
// backup id.
func BackupObjectKey(id, name string) string { return BackupsPrefix + id + "/" + name }

// BackupMetaKey is the key of backup id's backup.json, written last: a
// backup without it does not exist.
func BackupMetaKey(id string) string { return BackupObjectKey(id, "backup.json") }

// idLayout formats backup ids: the UTC start time to the millisecond, so
// that ids sort in time order whatever the cluster (a new system identifier
// or a pg_upgrade does not reorder them).
const idLayout = "20060102T150405.000Z"

var idPattern = regexp.MustCompile(`^\d{8}T\d{6}\.\d{3}Z$`)

// NewBackupID returns the id of a backup started at t.
func NewBackupID(t time.Time) string { return t.UTC().Format(idLayout) }

// NextBackupID returns the id of a backup started at t, made later than
// every backup id the repository holds, finished or not, if it would not
// sort after them: retention and restore order backups by id, and a host
// whose clock is behind must not put a new backup before an older one.
// Call it holding the backup lease, so that no other backup starts
// meanwhile.
func (r *Repo) NextBackupID(ctx context.Context, t time.Time) (string, error) {
	id := NewBackupID(t)
	for oi, err := range r.store.List(ctx, BackupsPrefix) {
		if err != nil {
			return "", err
		}
		prev, _, ok := strings.Cut(strings.TrimPrefix(oi.Key, BackupsPrefix), "/")
		if !ok || prev < id || ValidBackupID(prev) != nil {
			continue
		}
		pt, err := time.Parse(idLayout, prev)
		if err != nil {
			continue
		}
		id = NewBackupID(pt.Add(time.Millisecond))
	}
	return id, nil
}

// ValidBackupID reports whether id is a backup id, with an error that says
// what one looks like.
func ValidBackupID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("backup id %q: want the form 20261128T101500.123Z", id)
	}
	return nil
}

// Backup is backup.json: everything needed to restore a base backup and to
// decide what it needs.
type Backup struct {
	Format      int       `json:"format"`
	ID          string    `json:"id"`
	Label       string    `json:"label"`
	SystemID    string    `json:"system_identifier"`
	PGVersion   int       `json:"server_version_num"`
	SegmentSize uint64    `json:"wal_segment_size"`
	StartLSN    wal.LSN   `json:"-"`
	EndLSN      wal.LSN   `json:"-"`
	StartTLI    uint32    `json:"start_timeline"`
	EndTLI      uint32    `json:"end_timeline"`
	StartTime   time.Time `json:"start_time"`
	StopTime    time.Time `json:"stop_time"`
	// RawSize and StoredSize sum the objects' payload and stored bytes.
	RawSize    int64 `json:"raw_size"`
	StoredSize int64 `json:"stored_size"`
	// Compression and Encrypted describe how the objects were written.
	Compression string         `json:"compression"`
	Encrypted   bool           `json:"encrypted"`
	Objects     []BackupObject `json:"objects"`
}

// BackupObject is one stored object of a backup.
type BackupObject struct {
	Name       string `json:"name"`               // base.tar, <oid>.tar, backup_manifest; base.<part>.tar for later parts
	Part       int    `json:"part,omitempty"`     // an archive's parts count from 0, each a tar archive
	OID        uint32 `json:"oid,omitempty"`      // tablespace OID
	Location   string `json:"location,omitempty"` // tablespace directory on the server
	Size       int64  `json:"size"`
	StoredSize int64  `json:"stored_size"`
	SHA256     string `json:"sha256"` // of the stored bytes, as the codec records it
}

// MarshalJSON writes LSNs as PostgreSQL prints them.
func (b Backup) MarshalJSON() ([]byte, error) {
	type plain Backup
	return json.Marshal(struct {
		plain
		StartLSN string `json:"start_lsn"`
		EndLSN   string `json:"end_lsn"`
	}{plain(b), b.StartLSN.String(), b.EndLSN.String()})
}

// maxBackupJSON bounds backup.json: a few hundred bytes per object.
const maxBackupJSON = 16 << 20

// ParseBackup parses and checks backup.json.
func ParseBackup(b []byte) (Backup, error) {
	type plain Backup
	var v struct {
		plain
		StartLSN string `json:"start_lsn"`
		EndLSN   string `json:"end_lsn"`
	}
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&v); err != nil {
		return Backup{}, fmt.Errorf("backup.json: %v", err)
	}
	bk := Backup(v.plain)
	var err error
	if bk.StartLSN, err = wal.ParseLSN(v.StartLSN); err != nil {
		return Backup{}, fmt.Errorf("backup.json: start_lsn: %w", err)
	}
	if bk.EndLSN, err = wal.ParseLSN(v.EndLSN); err != nil {
		return Backup{}, fmt.Errorf("backup.json: end_lsn: %w", err)
	}
	switch {
	case bk.Format > BackupFormat:
		return Backup{}, fmt.Errorf("backup.json: format %d is newer than this walship's %d; upgrade walship", bk.Format, BackupFormat)
	case bk.Format < 1:
		return Backup{}, errors.New("backup.json: no format version")
	case ValidBackupID(bk.ID) != nil:
		return Backup{}, fmt.Errorf("backup.json: %w", ValidBackupID(bk.ID))
	case bk.EndLSN < bk.StartLSN:
		return Backup{}, fmt.Errorf("backup.json: end %s before start %s", bk.EndLSN, bk.StartLSN)
	case bk.StartTLI == 0 || bk.EndTLI < bk.StartTLI:
		return Backup{}, fmt.Errorf("backup.json: timelines %d..%d", bk.StartTLI, bk.EndTLI)
	case !wal.ValidSegmentSize(bk.SegmentSize):
		return Backup{}, fmt.Errorf("backup.json: wal_segment_size %d", bk.SegmentSize)
	}
	for _, o := range bk.Objects {
		if o.Name == "" || strings.ContainsAny(o.Name, "/\\") || o.Name[0] == '.' || o.Name == "backup.json" {
			return Backup{}, fmt.Errorf("backup.json: object name %q", o.Name)
		}
		if o.Part < 0 || o.Part > 0 && (bk.Format < 2 || o.Name == ManifestName) {
			return Backup{}, fmt.Errorf("backup.json: object %q: part %d", o.Name, o.Part)
		}
	}
	names := map[string]bool{}
	for _, o := range bk.Objects {
		if names[o.Name] {
			return Backup{}, fmt.Errorf("backup.json: object %q listed twice", o.Name)
		}
		names[o.Name] = true
	}
	for _, parts := range bk.Archives() {
		for i, o := range parts {
			switch {
			case o.Part != i:
				return Backup{}, fmt.Errorf("backup.json: archive %q has no part %d", parts[0].Name, i)
			case o.Name != PartName(parts[0].Name, i) || o.Location != parts[0].Location:
				return Backup{}, fmt.Errorf("backup.json: object %q is not part %d of archive %q", o.Name, i, parts[0].Name)
			}
		}
	}
	return bk, nil
}

// ManifestName is the name of the server's backup_manifest among a backup's
// objects.
const ManifestName = "backup_manifest"

// PartName names part n of the archive named name: name itself for the
// first, base.1.tar for the second part of base.tar.
func PartName(name string, n int) string {
	if n == 0 {
		return name
	}
	return fmt.Sprintf("%s.%d.tar", strings.TrimSuffix(name, ".tar"), n)
}

// CompareBackupObjects orders a backup's objects: archives by tablespace
// and part, then the manifest.
func CompareBackupObjects(a, b BackupObject) int {
	am, bm := a.Name == ManifestName, b.Name == ManifestName
	switch {
	case am != bm:
		if am {
			return 1
		}
		return -1
	case a.OID != b.OID:
		return cmp.Compare(a.OID, b.OID)
	}
	return cmp.Compare(a.Part, b.Part)
}

// Archives groups the backup's archive objects (not the manifest) by
// tablespace, base first, each archive's parts in order.
func (b Backup) Archives() [][]BackupObject {
	objs := slices.DeleteFunc(slices.Clone(b.Objects), func(o BackupObject) bool { return o.Name == ManifestName })
	slices.SortStableFunc(objs, CompareBackupObjects)
	var out [][]BackupObject
	for i, o := range objs {
		if i == 0 || o.OID != objs[i-1].OID {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], o)
	}
	return out
}

// WriteBackup stores backup.json for b, last of all its objects. It never
// replaces an existing backup.json.
func (r *Repo) WriteBackup(ctx context.Context, b Backup) error {
	b.Format = 1
	if slices.ContainsFunc(b.Objects, func(o BackupObject) bool { return o.Part > 0 }) {
		b.Format = 2
	}
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return fmt.Errorf("backup.json: %w", err)
	}
	if _, err := ParseBackup(data); err != nil {
		return fmt.Errorf("refusing to write an invalid %w", err)
	}
	if len(data) >= maxBackupJSON {
		return fmt.Errorf("backup.json of %d bytes is larger than the %d walship reads: too many objects (use a larger --part-size)", len(data), maxBackupJSON)
	}
	_, err = r.Create(ctx, BackupMetaKey(b.ID), bytes.NewReader(append(data, '\n')))
	return err
}

// ReadBackup reads backup id's backup.json; a backup without one gives an
// error matching storage.ErrNotExist.
func (r *Repo) ReadBackup(ctx context.Context, id string) (Backup, error) {
	if err := ValidBackupID(id); err != nil {
		return Backup{}, fmt.Errorf("%w: %w", ErrInvalidBackup, err)
	}
	data, err := r.ReadAll(ctx, BackupMetaKey(id), maxBackupJSON)
	if err != nil {
		return Backup{}, err
	}
	b, err := ParseBackup(data)
	if err != nil {
		return Backup{}, fmt.Errorf("backup %s: %w: %w", id, ErrInvalidBackup, err)
	}
	if b.ID != id {
		return Backup{}, fmt.Errorf("backup %s: %w: its backup.json says it is %s", id, ErrInvalidBackup, b.ID)
	}
	return b, nil
}

// ErrInvalidBackup is wrapped by the errors of ReadBackup that say what
// backup.json holds is not a backup's description.
var ErrInvalidBackup = errors.New("invalid backup.json")

// unreadable reports whether ReadBackup failed on what is stored, not on
// reading it: a damaged, undecipherable or invalid backup.json.
func unreadable(err error) bool {
	return errors.Is(err, ErrInvalidBackup) || errors.Is(err, ErrTooLarge) ||
		errors.Is(err, codec.ErrCorrupt) || errors.Is(err, codec.ErrIdentity) || errors.Is(err, codec.ErrUnsupported)
}

// BackupListing is what the repository holds under backups/.
type BackupListing struct {
	Backups []Backup                        // complete backups, oldest first
	Orphans map[string][]storage.ObjectInfo // objects of backups without backup.json, by id
	Invalid map[string]error                // backups whose backup.json cannot be read
}

// ListBackups lists the backups: those with a readable backup.json, oldest
// first, the objects of backups that never finished, and the backups whose
// backup.json is damaged or invalid. It fails if a backup.json cannot be
// read for another reason, such as a storage error.
func (r *Repo) ListBackups(ctx context.Context) (BackupListing, error) {
	l := BackupListing{Orphans: map[string][]storage.ObjectInfo{}, Invalid: map[string]error{}}
	objs := map[string][]storage.ObjectInfo{}
	var ids []string
	for oi, err := range r.store.List(ctx, BackupsPrefix) {
		if err != nil {
			return l, err
		}
		id, _, ok := strings.Cut(strings.TrimPrefix(oi.Key, BackupsPrefix), "/")
		if !ok {
			continue
		}
		if _, seen := objs[id]; !seen {
			ids = append(ids, id)
		}
		objs[id] = append(objs[id], oi)
	}
	for _, id := range ids {
		hasMeta := slices.ContainsFunc(objs[id], func(oi storage.ObjectInfo) bool { return oi.Key == BackupMetaKey(id) })
		if !hasMeta {
			l.Orphans[id] = objs[id]
			continue
		}
		b, err := r.ReadBackup(ctx, id)
		switch {
		case errors.Is(err, storage.ErrNotExist):
			// Pruned since the listing: what is left of it is unfinished.
			l.Orphans[id] = objs[id]
			continue
		case err != nil && unreadable(err):
			l.Invalid[id] = err
			continue
		case err != nil:
			// A failed read says nothing of the backup: the caller must
			// not plan as if it were not there.
			return l, err
		}
		l.Backups = append(l.Backups, b)
	}
	slices.SortFunc(l.Backups, func(a, b Backup) int { return strings.Compare(a.ID, b.ID) })
	return l, nil
}
