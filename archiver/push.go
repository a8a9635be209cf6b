package archiver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/internal/walrec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// Attribute keys of Push's log records.
const (
	pushAttrKey    = "key"
	pushAttrFile   = "file"
	pushAttrBytes  = "bytes"
	pushAttrStored = "stored_bytes"
	pushAttrTook   = "took"
)

const (
	// pushMinSegSize is the smallest segment size: names that parse for it
	// parse for no other size that wal.ParseFileName rejects them for.
	pushMinSegSize = 1 << 20
	// pushMaxHistory bounds a timeline history file: one short line per
	// ancestor timeline.
	pushMaxHistory = 1 << 20
	// pushMaxBackupFile bounds a backup history file: ten short lines and a
	// label of at most 1 kB.
	pushMaxBackupFile = 64 << 10
	// pushLongHeaderLen is the size of XLogLongPageHeaderData, the header
	// of a segment's first page.
	pushLongHeaderLen = 40
	// pushShortHeaderLen is the size of XLogPageHeaderData without padding,
	// the header of every other page.
	pushShortHeaderLen = 20
	// pushLongHeaderFlag is XLP_LONG_HEADER in xlp_info.
	pushLongHeaderFlag = 0x0002
)

// Push archives one file that PostgreSQL hands to archive_command as %p: a
// WAL segment, a segment cut short by a promotion (.partial), a timeline
// history file (TTTTTTTT.history) or a backup history file
// (<segment>.OOOOOOOO.backup), each under its key in the repository
// (storage/catalog).
//
// A segment's first page header must name the segment it is in, and every
// page header its place, so that a renamed, recycled or foreign file is
// refused. The first segment pushed to a repository without walship.json
// creates it from that header (system identifier and segment size); later
// segments must match it.
//
// Objects are written once: if the key is taken, Push compares the stored
// payload with the file, streaming both through sha256. The same bytes
// succeed (PostgreSQL archives a file again after a crash); different bytes
// are refused with an error, since they mean two clusters (or two primaries
// after a split brain) archive into one repository. A nil log discards.
func Push(ctx context.Context, repo *catalog.Repo, path string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := filepath.Base(path)
	f, err := wal.ParseFileName(name, pushMinSegSize)
	if err != nil {
		return fmt.Errorf("wal-push %s: %w; archive_command must pass %%p, a file from pg_wal", path, err)
	}
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("wal-push: %w", err)
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		return fmt.Errorf("wal-push: %w", err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("wal-push %s: not a regular file", path)
	}
	p := &pusher{repo: repo, log: log, file: file, path: path, size: info.Size()}
	meta, err := repo.ReadMeta(ctx)
	switch {
	case err == nil:
		p.meta = &meta
	case !errors.Is(err, catalog.ErrNoMeta):
		return err
	}
	switch f.Kind {
	case wal.KindHistory:
		return p.history(ctx, f)
	case wal.KindBackup:
		return p.backupFile(ctx, name)
	default:
		return p.segment(ctx, name, f.Kind)
	}
}

// pusher is one run of Push.
type pusher struct {
	repo *catalog.Repo
	log  *slog.Logger
	file *os.File
	path string
	size int64
	meta *catalog.Meta // nil while the repository has no walship.json
}

// history pushes a timeline history file, after checking that it parses and
// names only ancestors of its timeline.
func (p *pusher) history(ctx context.Context, f wal.File) error {
	b, err := p.readSmall(pushMaxHistory)
	if err != nil {
		return err
	}
	entries, err := wal.ParseHistory(b)
	if err != nil {
		return fmt.Errorf("wal-push %s: %w; this is not a timeline history file PostgreSQL wrote", p.path, err)
	}
	if len(entries) == 0 {
		return fmt.Errorf("wal-push %s: no timeline switch in it; PostgreSQL writes at least the switch from the parent timeline", p.path)
	}
	for _, e := range entries {
		if e.TLI >= f.TLI {
			return fmt.Errorf("wal-push %s: names timeline %d, which is not an ancestor of timeline %d", p.path, e.TLI, f.TLI)
		}
	}
	return p.store(ctx, catalog.HistoryKey(f.TLI), nil)
}

// backupFile pushes a backup history file. Its key needs the repository's
// segment size, so walship.json must exist: PostgreSQL archives the
// segment the backup started in before this file.
func (p *pusher) backupFile(ctx context.Context, name string) error {
	if p.meta == nil {
		return fmt.Errorf("wal-push %s: the repository has no walship.json yet, so its segment size is unknown; archive a WAL segment first (PostgreSQL archives the backup's segments before its .backup file)", p.path)
	}
	f, err := wal.ParseFileName(name, p.meta.SegmentSize)
	if err != nil {
		return fmt.Errorf("wal-push %s: %w", p.path, err)
	}
	b, err := p.readSmall(pushMaxBackupFile)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(b, []byte("START WAL LOCATION: ")) {
		return fmt.Errorf("wal-push %s: does not start with \"START WAL LOCATION: \"; this is not a backup history file PostgreSQL wrote", p.path)
	}
	return p.store(ctx, catalog.BackupKey(f.Segment, p.meta.SegmentSize, f.Offset), nil)
}

// readSmall reads the whole file, which must be at most max bytes.
func (p *pusher) readSmall(max int64) ([]byte, error) {
	if p.size > max {
		return nil, fmt.Errorf("wal-push %s: %d bytes, more than the %d of any such file PostgreSQL writes", p.path, p.size, max)
	}
	b, err := io.ReadAll(io.LimitReader(p.file, max+1))
	if err != nil {
		return nil, fmt.Errorf("wal-push: read %s: %w", p.path, err)
	}
	if int64(len(b)) != p.size {
		return nil, fmt.Errorf("wal-push %s: read %d bytes, but the file has %d; is something writing to it?", p.path, len(b), p.size)
	}
	return b, nil
}

// pushHeader is what walship checks of XLogLongPageHeaderData.
type pushHeader struct {
	magic    uint16
	info     uint16
	pageAddr wal.LSN
	sysID    uint64
	segSize  uint32
	blockLen uint32
}

// segment pushes a complete or .partial segment after checking its headers
// against its name and walship.json, creating walship.json if absent.
func (p *pusher) segment(ctx context.Context, name string, kind wal.Kind) error {
	if p.size < pushLongHeaderLen {
		return fmt.Errorf("wal-push %s: %d bytes, too short for a WAL page header", p.path, p.size)
	}
	var b [pushLongHeaderLen]byte
	if _, err := p.file.ReadAt(b[:], 0); err != nil {
		return fmt.Errorf("wal-push: read %s: %w", p.path, err)
	}
	h := pushHeader{
		magic:    binary.LittleEndian.Uint16(b[0:]),
		info:     binary.LittleEndian.Uint16(b[2:]),
		pageAddr: wal.LSN(binary.LittleEndian.Uint64(b[8:])),
		sysID:    binary.LittleEndian.Uint64(b[24:]),
		segSize:  binary.LittleEndian.Uint32(b[32:]),
		blockLen: binary.LittleEndian.Uint32(b[36:]),
	}
	notWAL := func(why string, a ...any) error {
		return fmt.Errorf("wal-push %s: %s; this is not a WAL segment of this name that PostgreSQL 14 to 18 wrote, so it is not archived",
			p.path, fmt.Sprintf(why, a...))
	}
	if wal.VersionOfPageMagic(h.magic) == 0 {
		return notWAL("page magic %#04x is not that of PostgreSQL 14 to 18", h.magic)
	}
	if h.info&pushLongHeaderFlag == 0 {
		return notWAL("the first page has no long header (xlp_info %#04x)", h.info)
	}
	segSize := uint64(h.segSize)
	if !wal.ValidSegmentSize(segSize) {
		return notWAL("the header's segment size %d is not a power of two from 1 MB to 1 GB", h.segSize)
	}
	if h.blockLen < 1024 || h.blockLen > 65536 || h.blockLen&(h.blockLen-1) != 0 || segSize%uint64(h.blockLen) != 0 {
		return notWAL("the header's page size %d is not a power of two from 1 kB to 64 kB", h.blockLen)
	}
	if h.sysID == 0 {
		return notWAL("the header's system identifier is 0")
	}
	sysID := strconv.FormatUint(h.sysID, 10)
	if p.meta != nil {
		if sysID != p.meta.SystemID {
			return fmt.Errorf("wal-push %s: this segment belongs to the PostgreSQL cluster with system identifier %s, but the repository to %s; "+
				"a second cluster is archiving here: give it a repository (or prefix) of its own", p.path, sysID, p.meta.SystemID)
		}
		if segSize != p.meta.SegmentSize {
			return fmt.Errorf("wal-push %s: the segment's header says %d-byte segments, but the repository holds %d-byte segments; use another --repo for this cluster",
				p.path, segSize, p.meta.SegmentSize)
		}
	}
	f, err := wal.ParseFileName(name, segSize)
	if err != nil {
		return fmt.Errorf("wal-push %s: %w", p.path, err)
	}
	if h.pageAddr != f.Segment.Start(segSize) {
		return notWAL("its first page is at %s, but %s starts at %s (a recycled or renamed file?)", h.pageAddr, name, f.Segment.Start(segSize))
	}
	var key string
	var check func(io.Reader) io.Reader
	switch kind {
	case wal.KindSegment:
		if p.size != int64(segSize) {
			return notWAL("%d bytes, but a segment is %d bytes", p.size, segSize)
		}
		key = catalog.SegmentKey(f.Segment, segSize)
		check = func(r io.Reader) io.Reader {
			return &pushPageCheck{r: r, path: p.path, pageLen: int64(h.blockLen), start: h.pageAddr, magic: h.magic}
		}
	case wal.KindPartial:
		// What follows the switch point in a .partial file is whatever the
		// recycled file held: only its first page is checked.
		if p.size > int64(segSize) {
			return notWAL("%d bytes, more than a %d-byte segment", p.size, segSize)
		}
		key = catalog.PartialKey(f.Segment, segSize)
	default:
		return fmt.Errorf("wal-push %s: unexpected kind of WAL file", p.path)
	}
	if p.meta == nil {
		m, err := p.repo.Init(ctx, catalog.Meta{SystemID: sysID, SegmentSize: segSize})
		if err != nil {
			return fmt.Errorf("wal-push %s: %w", p.path, err)
		}
		p.meta = &m
		p.log.Info("created walship.json", pushAttrKey, catalog.MetaKey, "system_identifier", sysID, "wal_segment_size", segSize)
	}
	if err := p.store(ctx, key, check); err != nil {
		return err
	}
	if kind == wal.KindSegment {
		p.index(ctx, f.Segment, segSize)
	}
	return nil
}

// index stores the segment's commit-time index, as the archiver does. A
// failure is only logged: restore then plans from backup times.
func (p *pusher) index(ctx context.Context, seg wal.Segment, segSize uint64) {
	key := catalog.IndexKey(seg, segSize)
	if _, err := p.repo.Store().Stat(ctx, key); err == nil {
		return
	}
	rec := walrec.NewReader(seg.Start(segSize), segSize)
	if seg.No > 0 {
		// The segment before, still in pg_wal, or else the carry in its
		// index, so that a record running into this one is read whole.
		prev := wal.Segment{TLI: seg.TLI, No: seg.No - 1}
		primed := false
		if f, err := os.Open(filepath.Join(filepath.Dir(p.path), prev.Name(segSize))); err == nil {
			r := walrec.NewReader(prev.Start(segSize), segSize)
			_, err := io.Copy(r, f)
			f.Close()
			if err == nil && r.Pos() == seg.Start(segSize) {
				r.Events()
				rec, primed = r, true
			}
		}
		if !primed {
			if _, carry, err := p.repo.ReadIndex(ctx, prev, segSize); err == nil {
				if r, err := walrec.NewReaderFrom(seg.Start(segSize), segSize, carry); err == nil {
					rec = r
				}
			}
		}
	}
	if _, err := io.Copy(rec, io.NewSectionReader(p.file, 0, p.size)); err != nil {
		p.log.Warn("cannot index the segment (commit times for --to-time); it is archived all the same", pushAttrKey, key, "error", err)
		return
	}
	if _, err := p.repo.Create(ctx, key, bytes.NewReader(catalog.EncodeIndex(rec.Events(), rec.Carry()))); err != nil && !errors.Is(err, storage.ErrExist) {
		p.log.Warn("store the segment's index", pushAttrKey, key, "error", err)
	}
}

// store writes the file under key unless the key is taken, and then compares.
// check, if not nil, wraps the file's reader to validate it while it is
// uploaded.
func (p *pusher) store(ctx context.Context, key string, check func(io.Reader) io.Reader) error {
	start := time.Now()
	_, err := p.repo.Store().Stat(ctx, key)
	if err == nil {
		return p.compare(ctx, key)
	}
	if !errors.Is(err, storage.ErrNotExist) {
		return fmt.Errorf("wal-push: stat %s: %w", key, err)
	}
	var r io.Reader = &pushExact{r: io.NewSectionReader(p.file, 0, p.size), left: p.size, path: p.path}
	if check != nil {
		r = check(r)
	}
	obj, err := p.repo.Create(ctx, key, r)
	if errors.Is(err, storage.ErrExist) {
		return p.compare(ctx, key) // another pusher was first
	}
	if err != nil {
		return fmt.Errorf("wal-push %s: store %s: %w", p.path, key, err)
	}
	p.log.Info("archived", pushAttrFile, filepath.Base(p.path), pushAttrKey, key,
		pushAttrBytes, obj.Size, pushAttrStored, obj.StoredSize, pushAttrTook, time.Since(start).Round(time.Millisecond))
	return nil
}

// compare succeeds if the object at key holds exactly the file's bytes.
// Both are streamed through sha256, never held in memory.
func (p *pusher) compare(ctx context.Context, key string) error {
	local := sha256.New()
	n, err := io.Copy(local, io.NewSectionReader(p.file, 0, p.size))
	if err != nil {
		return fmt.Errorf("wal-push: read %s: %w", p.path, err)
	}
	rc, err := p.repo.Open(ctx, key)
	if err != nil {
		return fmt.Errorf("wal-push %s: %s is already in the repository, and reading it to compare failed: %w", p.path, key, err)
	}
	stored := sha256.New()
	m, err := io.Copy(stored, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("wal-push %s: %s is already in the repository, and reading it to compare failed: %w; "+
			"if the stored copy is damaged, check this file with pg_waldump, then delete the stored object and archive again", p.path, key, err)
	}
	ls, ss := local.Sum(nil), stored.Sum(nil)
	if n == m && bytes.Equal(ls, ss) {
		p.log.Info("already archived with the same content", pushAttrFile, filepath.Base(p.path), pushAttrKey, key, pushAttrBytes, n)
		return nil
	}
	return fmt.Errorf("wal-push %s: the repository already holds different WAL under %s (%d bytes, sha256 %x; this file: %d bytes, sha256 %x); "+
		"refusing to overwrite it: two servers are archiving into one repository (a split brain after a failover, or a second cluster). "+
		"Find out which server this repository belongs to before anything else", p.path, key, m, ss, n, ls)
}

// pushExact yields exactly left bytes, failing if the file ends earlier, so
// that a file truncated under Push is never stored short.
type pushExact struct {
	r    io.Reader
	left int64
	path string
}

func (e *pushExact) Read(b []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > e.left {
		b = b[:e.left]
	}
	n, err := e.r.Read(b)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("wal-push: %s shrank while it was read: %w", e.path, io.ErrUnexpectedEOF)
	}
	return n, err
}

// pushPageCheck passes a complete segment through, checking each page header
// on the way: the same magic as the first page and the page's own address,
// except that after an XLOG_SWITCH record the rest of the segment is zero
// pages, headers included. A failure fails the upload, so nothing is stored.
type pushPageCheck struct {
	r       io.Reader
	path    string
	pageLen int64
	start   wal.LSN
	magic   uint16

	off  int64 // bytes passed so far
	hdr  [pushShortHeaderLen]byte
	zero bool // a zero page was seen
	err  error
}

func (c *pushPageCheck) Read(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(b)
	if cerr := c.scan(b[:n]); cerr != nil {
		c.err = cerr
		return 0, cerr
	}
	return n, err
}

// scan checks the page headers that end in b.
func (c *pushPageCheck) scan(b []byte) error {
	for len(b) > 0 {
		pos := c.off % c.pageLen
		if pos < pushShortHeaderLen {
			k := min(int64(len(b)), pushShortHeaderLen-pos)
			copy(c.hdr[pos:], b[:k])
			c.off += k
			b = b[k:]
			if pos+k == pushShortHeaderLen {
				if err := c.checkPage(c.off - pushShortHeaderLen); err != nil {
					return err
				}
			}
			continue
		}
		k := min(int64(len(b)), c.pageLen-pos)
		c.off += k
		b = b[k:]
	}
	return nil
}

func (c *pushPageCheck) checkPage(at int64) error {
	if c.hdr == [pushShortHeaderLen]byte{} {
		if at == 0 {
			return fmt.Errorf("wal-push %s: the first page header is zero; not a WAL segment", c.path)
		}
		c.zero = true
		return nil
	}
	want := c.start + wal.LSN(at)
	magic := binary.LittleEndian.Uint16(c.hdr[0:])
	addr := wal.LSN(binary.LittleEndian.Uint64(c.hdr[8:]))
	switch {
	case c.zero:
		return fmt.Errorf("wal-push %s: the page at offset %d has a header after zero pages; the segment is damaged or was not written in order", c.path, at)
	case magic != c.magic:
		return fmt.Errorf("wal-push %s: the page at offset %d has magic %#04x, the first page %#04x; the segment is damaged", c.path, at, magic, c.magic)
	case addr != want:
		return fmt.Errorf("wal-push %s: the page at offset %d is for %s, want %s; the segment is damaged or holds stale pages of a recycled file", c.path, at, addr, want)
	}
	return nil
}
