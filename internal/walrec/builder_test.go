package walrec

import (
	"encoding/binary"
	"hash/crc32"
	"time"
)

// builder lays out synthetic WAL the way PostgreSQL does: page headers,
// 8-byte aligned records, continuation flags and CRCs.
type builder struct {
	magic     uint16
	pageSize  uint64
	segSize   uint64
	sysID     uint64
	start     uint64
	buf       []byte // the WAL from start
	prev      uint64 // start of the last complete record
	nextFlags uint16 // extra xlp_info of the next page header
}

func newBuilder(start uint64) *builder {
	return &builder{magic: 0xD110, pageSize: 8192, segSize: 1 << 20, sysID: 7301234567890123456, start: start}
}

func (b *builder) pos() uint64 { return b.start + uint64(len(b.buf)) }

// pageHeader appends the header of the page that starts at pos.
func (b *builder) pageHeader(info uint16, rem uint32) {
	pos := b.pos()
	n := shortPageHeader
	if pos%b.segSize == 0 {
		n = longPageHeader
		info |= longHeaderFlag
	}
	h := make([]byte, n)
	binary.LittleEndian.PutUint16(h[0:], b.magic)
	binary.LittleEndian.PutUint16(h[2:], info|b.nextFlags)
	binary.LittleEndian.PutUint32(h[4:], 1)
	binary.LittleEndian.PutUint64(h[8:], pos)
	binary.LittleEndian.PutUint32(h[16:], rem)
	if n == longPageHeader {
		binary.LittleEndian.PutUint64(h[24:], b.sysID)
		binary.LittleEndian.PutUint32(h[32:], uint32(b.segSize))
		binary.LittleEndian.PutUint32(h[36:], uint32(b.pageSize))
	}
	b.nextFlags = 0
	b.buf = append(b.buf, h...)
}

// begin aligns pos for a new record and returns where it starts.
func (b *builder) begin() uint64 {
	for b.pos()%8 != 0 {
		b.buf = append(b.buf, 0)
	}
	if b.pos()%b.pageSize == 0 {
		b.pageHeader(0, 0)
	}
	return b.pos()
}

// recordBytes makes a record: header with CRC, then body.
func (b *builder) recordBytes(rmid, info uint8, xid uint32, body []byte) []byte {
	rec := make([]byte, recordHeader, recordHeader+len(body))
	binary.LittleEndian.PutUint32(rec[0:], uint32(recordHeader+len(body)))
	binary.LittleEndian.PutUint32(rec[4:], xid)
	binary.LittleEndian.PutUint64(rec[8:], b.prev)
	rec[16], rec[17] = info, rmid
	rec = append(rec, body...)
	crc := crc32.Update(0, castagnoli, rec[recordHeader:])
	crc = crc32.Update(crc, castagnoli, rec[:crcOffset])
	binary.LittleEndian.PutUint32(rec[crcOffset:], crc)
	return rec
}

// record appends a record and returns its start and its aligned end.
func (b *builder) record(rmid, info uint8, xid uint32, body []byte) (lsn, end uint64) {
	lsn = b.begin()
	left := b.recordBytes(rmid, info, xid, body)
	for len(left) > 0 {
		if b.pos()%b.pageSize == 0 {
			b.pageHeader(firstIsContRecord, uint32(len(left)))
		}
		n := min(b.pageSize-b.pos()%b.pageSize, uint64(len(left)))
		b.buf = append(b.buf, left[:n]...)
		left = left[n:]
	}
	b.prev = lsn
	return lsn, (b.pos() + 7) &^ 7
}

// torn appends the part of a record that fits on the current page, as a
// crash leaves it, and marks the next page as written over it by recovery.
func (b *builder) torn(rmid, info uint8, xid uint32, body []byte) uint64 {
	lsn := b.begin()
	rec := b.recordBytes(rmid, info, xid, body)
	room := b.pageSize - b.pos()%b.pageSize
	if uint64(len(rec)) <= room {
		panic("torn record fits its page")
	}
	b.buf = append(b.buf, rec[:room]...)
	b.nextFlags = firstIsOverwrite
	return lsn
}

// zeroTo appends zeros up to the LSN end.
func (b *builder) zeroTo(end uint64) {
	b.buf = append(b.buf, make([]byte, end-b.pos())...)
}

func (b *builder) segEnd() uint64 { return (b.pos() + b.segSize - 1) &^ (b.segSize - 1) }

// Record bodies.

func mainData(d []byte) []byte {
	if len(d) < 256 {
		return append([]byte{dataShort, byte(len(d))}, d...)
	}
	h := []byte{dataLong, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(h[1:], uint32(len(d)))
	return append(h, d...)
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func pgMicros(t time.Time) []byte { return le64(uint64(t.UnixMicro() - postgresEpochMicros)) }

func (b *builder) commit(xid uint32, t time.Time) (lsn, end uint64) {
	return b.record(rmXact, xactCommit, xid, mainData(pgMicros(t)))
}

func (b *builder) restorePoint(name string, t time.Time) (lsn, end uint64) {
	d := append(pgMicros(t), make([]byte, 64)...)
	copy(d[8:], name)
	return b.record(rmXLOG, xlogRestorePoint, 0, mainData(d))
}

func (b *builder) switchSegment() (lsn, end uint64) {
	lsn, end = b.record(rmXLOG, xlogSwitch, 0, nil)
	b.zeroTo(b.segEnd())
	return lsn, end
}

// filler appends a record of another resource manager, of totLen bytes.
func (b *builder) filler(totLen int) (lsn, end uint64) {
	n := totLen - recordHeader
	body := []byte{dataShort, byte(n - 2)}
	if n-2 > 255 {
		body = append([]byte{dataLong}, le32(uint32(n-5))...)
	}
	return b.record(10, 0, 0, append(body, make([]byte, n-len(body))...))
}

// xactFull is a commit or abort record's main data with every optional part,
// as PostgreSQL version writes it.
func xactFull(version int, kind Kind, t time.Time, prepared uint32) []byte {
	d := pgMicros(t)
	xinfo := uint32(xinfoDBInfo | xinfoSubxacts | xinfoRelFiles | xinfoTwoPhase | 1<<5 | 1<<7) // + origin, gid
	if version >= 15 {
		xinfo |= xinfoDroppedStats
	}
	if kind == CommitPrepared {
		xinfo |= xinfoInvals
	}
	d = append(d, le32(xinfo)...)
	d = append(d, le32(5)...)
	d = append(d, le32(1663)...) // dbinfo
	d = append(d, le32(2)...)
	d = append(d, le32(901)...)
	d = append(d, le32(902)...) // subxacts
	d = append(d, le32(1)...)
	d = append(d, make([]byte, 12)...) // rels
	if version >= 15 {
		size := 12
		if version >= 18 {
			size = 16
		}
		d = append(d, le32(2)...)
		d = append(d, make([]byte, 2*size)...)
	}
	if kind == CommitPrepared {
		d = append(d, le32(3)...)
		d = append(d, make([]byte, 3*16)...)
	}
	d = append(d, le32(prepared)...)
	d = append(d, "gid-1\x00"...)
	d = append(d, make([]byte, 16)...) // origin
	return d
}
