package walrec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/walship/walship/internal/wal"
)

// Block reference headers, from xlogrecord.h.
const (
	// headMax bounds the block headers of a record: 33 block references of
	// at most 26 bytes, a top-level xid, an origin and a main data length
	// take 871.
	headMax = 1024

	maxBlockID  = 32
	toplevelXID = 252
	originID    = 253
	dataLong    = 254
	dataShort   = 255

	bkpHasImage = 0x10
	bkpHasData  = 0x20
	bkpSameRel  = 0x80
	imgHasHole  = 0x01
)

// imageCompressed reports whether a block image's bimg_info says it is
// compressed, which decides whether a hole length follows.
func imageCompressed(info uint8, version int) bool {
	if version == 14 {
		return info&0x02 != 0 // BKPIMAGE_IS_COMPRESSED
	}
	return info&(0x04|0x08|0x10) != 0 // BKPIMAGE_COMPRESS_PGLZ, _LZ4, _ZSTD
}

// blockHeaders walks the fragment headers at the start of a record's body,
// of bodyLen bytes, of which b holds the first, and returns where the main
// data starts in the body. The main data is the body's tail.
func blockHeaders(b []byte, bodyLen uint32, version int) (uint32, error) {
	h := headers{b: b, whole: len(b) == int(bodyLen), version: version}
	var (
		total     uint64 // bytes of images and data after the headers
		mainLen   uint64
		lastBlock = -1
	)
	for uint64(bodyLen)-uint64(h.off) > total {
		v, err := h.take(1)
		if err != nil {
			return 0, err
		}
		id := v[0]
		switch {
		case id == dataShort:
			if v, err = h.take(1); err == nil {
				mainLen = uint64(v[0])
			}
		case id == dataLong:
			if v, err = h.take(4); err == nil {
				mainLen = uint64(binary.LittleEndian.Uint32(v))
			}
		case id == originID:
			_, err = h.take(2)
		case id == toplevelXID:
			_, err = h.take(4)
		case id <= maxBlockID:
			if int(id) <= lastBlock {
				return 0, fmt.Errorf("block %d after block %d", id, lastBlock)
			}
			lastBlock = int(id)
			var n uint64
			n, err = h.block()
			total += n
		default:
			return 0, fmt.Errorf("unknown block id %d", id)
		}
		if err != nil {
			return 0, err
		}
		if id == dataShort || id == dataLong {
			total += mainLen
			break // the main data header comes last
		}
	}
	if uint64(bodyLen)-uint64(h.off) != total {
		return 0, fmt.Errorf("headers of %d bytes announce %d more, but the record has %d", h.off, total, uint64(bodyLen)-uint64(h.off))
	}
	return bodyLen - uint32(mainLen), nil
}

// headers reads the fragment headers of a record.
type headers struct {
	b       []byte // the body's first bytes
	whole   bool   // b is the whole body
	off     int
	haveRel bool // a block named its relation, which later ones may share
	version int
}

func (h *headers) take(n int) ([]byte, error) {
	if h.off+n > len(h.b) {
		if !h.whole {
			return nil, errors.New("block headers longer than PostgreSQL writes")
		}
		return nil, errors.New("block headers run past the record's end")
	}
	v := h.b[h.off : h.off+n]
	h.off += n
	return v, nil
}

// block reads one block reference header after its id and returns the bytes
// of image and data it announces.
func (h *headers) block() (uint64, error) {
	v, err := h.take(3)
	if err != nil {
		return 0, err
	}
	flags, dataLen := v[0], uint64(binary.LittleEndian.Uint16(v[1:]))
	if (flags&bkpHasData != 0) != (dataLen != 0) {
		return 0, fmt.Errorf("block with flags %02X has %d bytes of data", flags, dataLen)
	}
	n := dataLen
	if flags&bkpHasImage != 0 {
		img, err := h.take(5) // bimg_len, hole_offset, bimg_info
		if err != nil {
			return 0, err
		}
		n += uint64(binary.LittleEndian.Uint16(img))
		if info := img[4]; info&imgHasHole != 0 && imageCompressed(info, h.version) {
			if _, err := h.take(2); err != nil { // hole_length
				return 0, err
			}
		}
	}
	if flags&bkpSameRel == 0 {
		if _, err := h.take(12); err != nil { // RelFileLocator
			return 0, err
		}
		h.haveRel = true
	} else if !h.haveRel {
		return 0, errors.New("block refers to the previous block's relation, but there is none")
	}
	_, err = h.take(4) // BlockNumber
	return n, err
}

// Commit and abort records (xact.h): xact_time, then if XLOG_XACT_HAS_INFO
// an xinfo word saying which parts follow, in this order.
const (
	xinfoDBInfo       = 1 << 0
	xinfoSubxacts     = 1 << 1
	xinfoRelFiles     = 1 << 2
	xinfoInvals       = 1 << 3
	xinfoTwoPhase     = 1 << 4
	xinfoDroppedStats = 1 << 8 // PostgreSQL 15 and later

	restorePointSize  = 8 + 64 // rp_time, rp_name
	endOfRecoverySize = 8 + 4 + 4
)

// xactPart is an optional part of a commit or abort record before the
// prepared transaction's xid.
type xactPart struct {
	flag  uint32
	fixed uint64 // its size, or 0 for an array of elem-byte items after a 4-byte count
	elem  uint64
}

// xactParts lists the parts before xl_xact_twophase for the given version
// and kind; aborts carry no invalidations.
func xactParts(version int, kind Kind) ([5]xactPart, int) {
	parts := [5]xactPart{
		{flag: xinfoDBInfo, fixed: 8},
		{flag: xinfoSubxacts, elem: 4},
		{flag: xinfoRelFiles, elem: 12},
	}
	n := 3
	switch {
	case version >= 18:
		parts[n] = xactPart{flag: xinfoDroppedStats, elem: 16}
		n++
	case version >= 15:
		parts[n] = xactPart{flag: xinfoDroppedStats, elem: 12}
		n++
	}
	if kind == Commit || kind == CommitPrepared {
		parts[n] = xactPart{flag: xinfoInvals, elem: 16}
		n++
	}
	return parts, n
}

// fields pulls the fields of an event out of a record's body as it streams
// by: it skips to a field, gathers its bytes, decodes it and moves on.
type fields struct {
	skip  uint64 // bytes to pass before the next field
	buf   [restorePointSize]byte
	have  int
	need  int // size of the next field
	step  int
	done  bool
	part  int    // next xactPart to look at
	elem  uint64 // item size of the array whose count is next
	xinfo uint32
	time  int64
	xid   uint32
	name  string
	tli   uint32
	lsn   uint64
}

// Steps of a fields scan.
const (
	stepFirst    = iota // the record's fixed leading struct
	stepXinfo           // xl_xact_xinfo
	stepCount           // the count of an xact part's items
	stepTwoPhase        // xl_xact_twophase
)

// start sets up a scan for a record of the given kind whose main data
// begins mainOff bytes into the body.
func (f *fields) start(kind Kind, mainOff uint32) {
	*f = fields{skip: uint64(mainOff)}
	switch kind {
	case RestorePoint:
		f.need = restorePointSize
	case EndOfRecovery:
		f.need = endOfRecoverySize
	default: // xact_time, BACKUP_END's start LSN
		f.need = 8
	}
}

// scan passes the next bytes of the body to the record's fields scan.
func (r *Reader) scan(p []byte) error {
	f := &r.rec.fields
	for len(p) > 0 && !f.done {
		if f.skip > 0 {
			k := min(uint64(len(p)), f.skip)
			f.skip -= k
			p = p[k:]
			continue
		}
		k := copy(f.buf[f.have:f.need], p)
		f.have += k
		p = p[k:]
		if f.have == f.need {
			f.have = 0
			if err := r.field(); err != nil {
				return err
			}
		}
	}
	return nil
}

// field decodes a complete field and sets up the next.
func (r *Reader) field() error {
	f, rec := &r.rec.fields, &r.rec
	le := binary.LittleEndian
	switch f.step {
	case stepFirst:
		switch rec.kind {
		case RestorePoint:
			f.time = int64(le.Uint64(f.buf[:]))
			name := f.buf[8:restorePointSize]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			f.name = string(name)
		case EndOfRecovery:
			f.time = int64(le.Uint64(f.buf[:]))
			f.tli = le.Uint32(f.buf[8:])
		case BackupEnd:
			f.lsn = le.Uint64(f.buf[:])
		default:
			f.time = int64(le.Uint64(f.buf[:]))
			if (rec.kind == CommitPrepared || rec.kind == AbortPrepared) && rec.hdr[16]&xactHasInfo != 0 {
				f.step, f.need = stepXinfo, 4
				return nil
			}
		}
		f.done = true
	case stepXinfo:
		f.xinfo = le.Uint32(f.buf[:])
		f.nextPart(r.version, rec.kind)
	case stepCount:
		n := int32(le.Uint32(f.buf[:]))
		if n < 0 {
			return fmt.Errorf("walrec: %s record at %s has a count of %d: the WAL is damaged", rec.kind, rec.start, n)
		}
		f.skip += uint64(n) * f.elem
		f.nextPart(r.version, rec.kind)
	case stepTwoPhase:
		f.xid = le.Uint32(f.buf[:])
		f.done = true
	}
	return nil
}

// nextPart sets up the scan of the next part present in a commit or abort
// record, up to the prepared transaction's xid.
func (f *fields) nextPart(version int, kind Kind) {
	parts, n := xactParts(version, kind)
	for f.part < n {
		pt := parts[f.part]
		f.part++
		switch {
		case f.xinfo&pt.flag == 0:
		case pt.fixed > 0:
			f.skip += pt.fixed
		default:
			f.elem = pt.elem
			f.step, f.need = stepCount, 4
			return
		}
	}
	if f.xinfo&xinfoTwoPhase == 0 {
		f.done = true
		return
	}
	f.step, f.need = stepTwoPhase, 4
}

// event makes the event of the complete record being read.
func (r *Reader) event() (Event, error) {
	rec := &r.rec
	f := &rec.fields
	if !f.done {
		return Event{}, fmt.Errorf("walrec: %s record at %s is shorter than its fields: the WAL is damaged", rec.kind, rec.start)
	}
	ev := Event{
		LSN:  rec.start,
		End:  r.pos + wal.LSN(padding(r.pos)),
		Kind: rec.kind,
		XID:  binary.LittleEndian.Uint32(rec.hdr[4:]),
	}
	switch rec.kind {
	case CommitPrepared, AbortPrepared:
		if f.xid == 0 {
			return Event{}, fmt.Errorf("walrec: %s record at %s names no prepared transaction: the WAL is damaged", rec.kind, rec.start)
		}
		ev.XID = f.xid
	case RestorePoint:
		ev.Name = f.name
	case EndOfRecovery:
		ev.TLI = wal.TimeLineID(f.tli)
	case BackupEnd:
		ev.BackupStart = wal.LSN(f.lsn)
	}
	if rec.kind != BackupEnd {
		ev.Time = pgTime(f.time)
	}
	return ev, nil
}
