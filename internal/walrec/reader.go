package walrec

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/walship/walship/internal/wal"
)

// Kind says what a record of interest is.
type Kind uint8

// The records a Reader reports.
const (
	Commit         Kind = iota + 1 // a transaction committed (XLOG_XACT_COMMIT)
	Abort                          // a transaction or subtransaction aborted (XLOG_XACT_ABORT)
	CommitPrepared                 // COMMIT PREPARED (XLOG_XACT_COMMIT_PREPARED)
	AbortPrepared                  // ROLLBACK PREPARED (XLOG_XACT_ABORT_PREPARED)
	RestorePoint                   // pg_create_restore_point (XLOG_RESTORE_POINT)
	EndOfRecovery                  // a standby was promoted and began a new timeline (XLOG_END_OF_RECOVERY)
	BackupEnd                      // the end of an online backup taken on a primary (XLOG_BACKUP_END)
)

var kindNames = [...]string{"", "commit", "abort", "commit prepared", "abort prepared", "restore point", "end of recovery", "backup end"}

// String returns the kind in words, as "commit prepared".
func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Event is one record of interest.
type Event struct {
	LSN wal.LSN // where the record starts
	// End is just past the record, rounded up to 8 bytes: the LSN that
	// pg_create_restore_point and pg_switch_wal return for their records.
	// The next record starts there, or after the page header there.
	End  wal.LSN
	Kind Kind
	// Time is the commit or abort time, the restore point's or the
	// promotion's time, in UTC; zero for BackupEnd.
	Time time.Time
	// XID is the record's transaction (for an Abort of a subtransaction, the
	// subtransaction's), or for the prepared kinds the prepared transaction.
	XID         uint32
	Name        string         // RestorePoint: its name
	TLI         wal.TimeLineID // EndOfRecovery: the new timeline
	BackupStart wal.LSN        // BackupEnd: where the backup started
}

// Layout of the WAL, from xlog_internal.h and xlogrecord.h.
const (
	shortPageHeader = 24 // SizeOfXLogShortPHD
	longPageHeader  = 40 // SizeOfXLogLongPHD
	recordHeader    = 24 // SizeOfXLogRecord
	crcOffset       = 20 // xl_crc, which the CRC covers up to

	firstIsContRecord   = 0x0001
	longHeaderFlag      = 0x0002
	firstIsOverwrite    = 0x0008
	pageInfoFlags       = 0x000F
	rmXLOG, rmXact      = 0, 1
	xlogSwitch          = 0x40
	xlogBackupEnd       = 0x50
	xlogRestorePoint    = 0x70
	xlogEndOfRecovery   = 0x90
	xactOpMask          = 0x70
	xactHasInfo         = 0x80
	xactCommit          = 0x00
	xactAbort           = 0x20
	xactCommitPrepared  = 0x30
	xactAbortPrepared   = 0x40
	postgresEpochMicros = 946684800000000 // 2000-01-01 in Unix microseconds
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Reader reads WAL in order, from a segment start, and collects the events
// in it. Bytes may come in writes of any size; the Reader keeps what it needs
// of a record that is not complete yet. It is not safe for concurrent use.
type Reader struct {
	segSize  uint64
	pageSize uint64 // xlp_xlog_blcksz of the first long page header; 0 before it
	magic    uint16 // xlp_magic of the first page
	version  int    // PostgreSQL major version that magic stands for
	sysID    uint64
	pos      wal.LSN // LSN of the next byte
	err      error   // sticky

	page     [longPageHeader]byte // the page header being read
	pageHave int
	pageNeed int // size of the page header pos is in, 0 in a page's data

	skipTo wal.LSN // bytes before it are ignored: a segment's rest after XLOG_SWITCH or after the end of valid WAL
	cold   bool    // no record seen yet: continuation data on the next page belongs to a record before the start
	pad    int     // alignment bytes before the next record
	prev   wal.LSN // start of the last complete record, 0 if not known
	rec    record
	head   [headMax]byte // a record's first bytes, holding its block headers
	events []Event

	begun bool   // bytes were written, or the Reader was made from a Carry
	tail  []byte // the last CarryMax bytes of the segment, as they come, for Carry

	// all makes the Reader check every record as it checks those it
	// reports, and seen, if set, is called with each; for tests.
	all  bool
	seen func(lsn wal.LSN, rmid, info uint8, totLen uint32)
}

// record is the state of the record being read.
type record struct {
	active bool    // a record is being read
	cont   bool    // the rest of a record skipped: one that started before the Reader's start, or that a Carry says is of no interest
	start  wal.LSN // for cont, 0 unless a Carry gave it
	hdr    [recordHeader]byte
	totLen uint32 // xl_tot_len once known; for cont, the bytes to skip
	got    uint32 // bytes read, header included
	want   bool   // CRC-checked, with its block headers walked
	sw     bool   // XLOG_SWITCH
	kind   Kind
	crc    uint32
	headN  int  // bytes of Reader.head filled
	parsed bool // the block headers were walked
	fields fields
}

// NewReader returns a Reader for WAL of segSize-byte segments that will be
// fed from start, which must be a segment start. A record that continues
// from the segment before start is skipped.
func NewReader(start wal.LSN, segSize uint64) *Reader {
	r := newReader(start, segSize)
	switch {
	case !wal.ValidSegmentSize(segSize):
		r.err = fmt.Errorf("walrec: segment size %d: want a power of two from 1 MB to 1 GB, as initdb --wal-segsize sets", segSize)
	case uint64(start)%segSize != 0:
		r.err = fmt.Errorf("walrec: start %s is not a segment start; begin at %s", start, wal.LSN(uint64(start)/segSize*segSize))
	}
	return r
}

// newReader is NewReader without its checks, for tests of segments smaller
// than PostgreSQL allows.
func newReader(start wal.LSN, segSize uint64) *Reader {
	return &Reader{segSize: segSize, pos: start, cold: true, pageNeed: longPageHeader}
}

// Pos returns the LSN just past the bytes written so far.
func (r *Reader) Pos() wal.LSN { return r.pos }

// Events returns the events of the records completed so far, in WAL order,
// and forgets them. Call it often enough: the Reader keeps every event until
// then.
func (r *Reader) Events() []Event {
	ev := r.events
	r.events = nil
	return ev
}

// Write feeds the WAL bytes that follow those written before. It does not
// keep p. It fails on WAL that is not valid, naming the LSN, and then keeps
// failing: a page of another version, cluster or position, a record that does
// not continue where it should, or a reported record whose CRC does not
// match. A zero record length marks the end of valid WAL, as in a partial
// segment padded with zeros: the rest of that segment is ignored.
func (r *Reader) Write(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) > 0 {
		r.begun = true
		r.keepTail(p)
	}
	n := 0
	for n < len(p) {
		k, err := r.step(p[n:])
		n += k
		if err != nil {
			r.err = err
			return n, err
		}
	}
	return n, nil
}

// step consumes at least one byte of p, which is not empty.
func (r *Reader) step(p []byte) (int, error) {
	if r.skipTo > r.pos {
		k := int(min(uint64(len(p)), uint64(r.skipTo-r.pos)))
		r.advance(k)
		return k, nil
	}
	if r.pageNeed > 0 {
		return r.pageHeader(p)
	}
	if room := r.pageSize - uint64(r.pos)&(r.pageSize-1); uint64(len(p)) > room {
		p = p[:room]
	}
	n := 0
	for n < len(p) && r.pageNeed == 0 && r.skipTo <= r.pos {
		k, err := r.data(p[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// advance moves past k bytes that are not part of a page header.
func (r *Reader) advance(k int) {
	r.pos += wal.LSN(k)
	switch {
	case uint64(r.pos)&(r.segSize-1) == 0:
		r.pageNeed = longPageHeader
	case r.pageSize != 0 && uint64(r.pos)&(r.pageSize-1) == 0:
		r.pageNeed = shortPageHeader
	}
}

func (r *Reader) pageHeader(p []byte) (int, error) {
	k := copy(r.page[r.pageHave:r.pageNeed], p)
	r.pageHave += k
	r.pos += wal.LSN(k)
	if r.pageHave < r.pageNeed {
		return k, nil
	}
	h := r.page[:r.pageNeed]
	r.pageHave, r.pageNeed = 0, 0
	return k, r.checkPage(h)
}

// checkPage checks a complete page header and sets up the page's data.
func (r *Reader) checkPage(h []byte) error {
	at := r.pos - wal.LSN(len(h))
	if allZero(h[:shortPageHeader]) {
		// A page never written: the end of valid WAL, as in a zero-padded
		// partial segment. A record running into it was never completed.
		r.endOfWAL()
		return nil
	}
	magic := binary.LittleEndian.Uint16(h[0:])
	info := binary.LittleEndian.Uint16(h[2:])
	addr := binary.LittleEndian.Uint64(h[8:])
	rem := binary.LittleEndian.Uint32(h[16:])
	v := wal.VersionOfPageMagic(magic)
	switch {
	case v == 0:
		return fmt.Errorf("walrec: page at %s has magic %04X, not that of PostgreSQL 14-18 WAL (D10D, D110, D113, D116 or D118); feed WAL segments from their first byte, in order", at, magic)
	case r.magic != 0 && magic != r.magic:
		return fmt.Errorf("walrec: page at %s has magic %04X but earlier pages %04X: WAL of another PostgreSQL version; use a new Reader for each cluster", at, magic, r.magic)
	case wal.LSN(addr) != at:
		return fmt.Errorf("walrec: page at %s says it is at %s: the bytes belong elsewhere; feed segments in order, from a segment start", at, wal.LSN(addr))
	case info&^pageInfoFlags != 0:
		return fmt.Errorf("walrec: page at %s has unknown flags %04X: the WAL is damaged", at, info)
	case (len(h) == longPageHeader) != (info&longHeaderFlag != 0):
		return fmt.Errorf("walrec: page at %s: a long header belongs on a segment's first page, and only there: the WAL is damaged", at)
	}
	if len(h) == longPageHeader {
		if err := r.checkLongHeader(at, h); err != nil {
			return err
		}
	}
	r.magic, r.version = magic, v
	switch {
	case info&firstIsOverwrite != 0:
		// The pending record was torn by a crash; recovery wrote over its
		// continuation, starting with this page.
		r.rec.active = false
	case r.rec.active:
		missing := r.rec.totLen - r.rec.got
		if info&firstIsContRecord == 0 {
			return fmt.Errorf("walrec: record at %s runs past its page, but the page at %s does not continue it: the WAL is not continuous", r.rec.start, at)
		}
		if rem != missing {
			return fmt.Errorf("walrec: record at %s needs %d more bytes, but the page at %s continues %d: the WAL is not continuous", r.rec.start, missing, at, rem)
		}
	case info&firstIsContRecord != 0:
		if !r.cold {
			return fmt.Errorf("walrec: page at %s continues a record, but none is pending: the WAL is not continuous", at)
		}
		if rem == 0 {
			return fmt.Errorf("walrec: page at %s continues a record of 0 bytes: the WAL is damaged", at)
		}
		r.rec = record{active: true, cont: true, totLen: rem}
	}
	r.cold = false
	return nil
}

func (r *Reader) checkLongHeader(at wal.LSN, h []byte) error {
	sysID := binary.LittleEndian.Uint64(h[24:])
	segSize := uint64(binary.LittleEndian.Uint32(h[32:]))
	pageSize := uint64(binary.LittleEndian.Uint32(h[36:]))
	switch {
	case segSize != r.segSize:
		return fmt.Errorf("walrec: segment at %s has %d-byte segments, the Reader was made for %d; make it with the cluster's wal_segment_size", at, segSize, r.segSize)
	case pageSize < 1<<10 || pageSize > 1<<16 || pageSize&(pageSize-1) != 0 || segSize%pageSize != 0:
		return fmt.Errorf("walrec: segment at %s has %d-byte pages, which PostgreSQL does not write: the WAL is damaged", at, pageSize)
	case r.pageSize != 0 && pageSize != r.pageSize:
		return fmt.Errorf("walrec: segment at %s has %d-byte pages, earlier ones %d: WAL of another cluster; use a new Reader for each cluster", at, pageSize, r.pageSize)
	case r.sysID != 0 && sysID != r.sysID:
		return fmt.Errorf("walrec: segment at %s belongs to system %d, earlier ones to %d: WAL of another cluster; use a new Reader for each cluster", at, sysID, r.sysID)
	}
	r.sysID, r.pageSize = sysID, pageSize
	return nil
}

// endOfWAL ignores the rest of the segment, and any record pending.
func (r *Reader) endOfWAL() {
	r.rec.active = false
	r.pad = 0
	r.prev = 0
	r.cold = true
	r.skipTo = wal.LSN((uint64(r.pos) + r.segSize - 1) &^ (r.segSize - 1))
}

// data consumes at least one byte of a page's data area, which p does not
// run past.
func (r *Reader) data(p []byte) (int, error) {
	if r.pad > 0 {
		k := min(r.pad, len(p))
		r.pad -= k
		r.advance(k)
		return k, nil
	}
	rec := &r.rec
	if !rec.active {
		rec.start, rec.totLen, rec.got, rec.active, rec.cont = r.pos, 0, 0, true, false
	}
	if rec.cont {
		k := int(min(uint64(len(p)), uint64(rec.totLen-rec.got)))
		rec.got += uint32(k)
		r.advance(k)
		if rec.got == rec.totLen {
			rec.active = false
			r.pad = padding(r.pos)
			r.prev = rec.start // 0 unless a Carry gave it
		}
		return k, nil
	}
	if rec.got < recordHeader {
		k := copy(rec.hdr[rec.got:], p)
		rec.got += uint32(k)
		r.advance(k)
		if rec.totLen == 0 && rec.got >= 4 {
			rec.totLen = binary.LittleEndian.Uint32(rec.hdr[:])
			if rec.totLen == 0 {
				r.endOfWAL()
				return k, nil
			}
			if rec.totLen < recordHeader {
				return k, fmt.Errorf("walrec: record at %s has length %d, less than a record header: the WAL is damaged", rec.start, rec.totLen)
			}
		}
		if rec.got < recordHeader {
			return k, nil
		}
		if err := r.recordHeader(); err != nil {
			return k, err
		}
		if rec.got == rec.totLen {
			return k, r.finish()
		}
		return k, nil
	}
	k := int(min(uint64(len(p)), uint64(rec.totLen-rec.got)))
	if rec.want {
		if err := r.body(p[:k]); err != nil {
			return k, err
		}
	}
	rec.got += uint32(k)
	r.advance(k)
	if rec.got == rec.totLen {
		return k, r.finish()
	}
	return k, nil
}

// recordHeader looks at a complete record header.
func (r *Reader) recordHeader() error {
	rec := &r.rec
	if prev := wal.LSN(binary.LittleEndian.Uint64(rec.hdr[8:])); r.prev != 0 && prev != r.prev {
		return fmt.Errorf("walrec: record at %s says the previous record is at %s, not %s: the WAL is not continuous", rec.start, prev, r.prev)
	}
	info, rmid := rec.hdr[16], rec.hdr[17]
	rec.kind = kindOf(rmid, info)
	rec.sw = rmid == rmXLOG && info&0xF0 == xlogSwitch
	rec.want = rec.kind != 0 || rec.sw || r.all
	if !rec.want {
		return nil
	}
	rec.crc, rec.headN, rec.parsed = 0, 0, false
	return r.body(nil)
}

func kindOf(rmid, info uint8) Kind {
	switch rmid {
	case rmXact:
		switch info & xactOpMask {
		case xactCommit:
			return Commit
		case xactAbort:
			return Abort
		case xactCommitPrepared:
			return CommitPrepared
		case xactAbortPrepared:
			return AbortPrepared
		}
	case rmXLOG:
		switch info & 0xF0 {
		case xlogRestorePoint:
			return RestorePoint
		case xlogEndOfRecovery:
			return EndOfRecovery
		case xlogBackupEnd:
			return BackupEnd
		}
	}
	return 0
}

// body takes the next bytes of a wanted record after its header: it keeps
// the CRC, walks the block headers once they are in, then passes the main
// data to the field scanner.
func (r *Reader) body(p []byte) error {
	rec := &r.rec
	rec.crc = crc32.Update(rec.crc, castagnoli, p)
	if !rec.parsed {
		bodyLen := rec.totLen - recordHeader
		want := int(min(uint64(bodyLen), headMax))
		k := copy(r.head[rec.headN:want], p)
		rec.headN += k
		p = p[k:]
		if rec.headN < want {
			return nil
		}
		mainOff, err := blockHeaders(r.head[:want], bodyLen, r.version)
		if err != nil {
			return fmt.Errorf("walrec: record at %s: %v: the WAL is damaged", rec.start, err)
		}
		rec.parsed = true
		if rec.kind == 0 {
			return nil
		}
		rec.fields.start(rec.kind, mainOff)
		if err := r.scan(r.head[:want]); err != nil {
			return err
		}
	}
	if rec.kind != 0 {
		return r.scan(p)
	}
	return nil
}

// finish checks a complete record and reports it.
func (r *Reader) finish() error {
	rec := &r.rec
	rec.active = false
	r.pad = padding(r.pos)
	if rec.want {
		crc := crc32.Update(rec.crc, castagnoli, rec.hdr[:crcOffset])
		if want := binary.LittleEndian.Uint32(rec.hdr[crcOffset:]); crc != want {
			return fmt.Errorf("walrec: record at %s (rmgr %d, info %02X, %d bytes) fails its CRC-32C check: the WAL is damaged; fetch the segment again", rec.start, rec.hdr[17], rec.hdr[16], rec.totLen)
		}
		if rec.kind != 0 {
			ev, err := r.event()
			if err != nil {
				return err
			}
			r.events = append(r.events, ev)
		}
		if r.seen != nil {
			r.seen(rec.start, rec.hdr[17], rec.hdr[16], rec.totLen)
		}
	}
	r.prev = rec.start
	if rec.sw {
		r.skipTo = wal.LSN((uint64(r.pos) + r.segSize - 1) &^ (r.segSize - 1))
	}
	return nil
}

// padding is the count of bytes from pos to the next 8-byte boundary.
func padding(pos wal.LSN) int { return int(-pos & 7) }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// pgTime converts a TimestampTz: microseconds since 2000-01-01 UTC.
func pgTime(t int64) time.Time { return time.UnixMicro(t + postgresEpochMicros).UTC() }
