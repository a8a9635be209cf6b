package walrec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/wal"
)

const seg1 = 1 << 20 // the synthetic WAL's first segment starts at 0/100000

// splits are the ways a test feeds WAL: all at once, a byte at a time, and in
// random pieces.
var splits = map[string]func(rest int) int{
	"whole": func(rest int) int { return rest },
	"bytes": func(int) int { return 1 },
	"random": func() func(int) int {
		rng := rand.New(rand.NewPCG(1, 2))
		return func(rest int) int { return 1 + rng.IntN(min(rest, 9000)) }
	}(),
}

// read feeds data, which starts at start, to a new Reader in pieces of the
// sizes split returns, and returns the events and the first error.
func read(start uint64, data []byte, split func(rest int) int) ([]Event, *Reader, error) {
	r := NewReader(wal.LSN(start), seg1)
	var events []Event
	for len(data) > 0 {
		n := min(split(len(data)), len(data))
		k, err := r.Write(data[:n])
		events = append(events, r.Events()...)
		if err != nil {
			return events, r, err
		}
		if k != n {
			return events, r, errShortWrite
		}
		data = data[n:]
	}
	return events, r, nil
}

var errShortWrite = errors.New("short write without an error")

// checkRead reads data every way of splits and wants the same events and no
// error each time.
func checkRead(t *testing.T, start uint64, data []byte, want []Event) {
	t.Helper()
	for name, split := range splits {
		got, r, err := read(start, data, split)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: events\n got %+v\nwant %+v", name, got, want)
		}
		if r.Pos() != wal.LSN(start+uint64(len(data))) {
			t.Errorf("%s: Pos() = %s, want %s", name, r.Pos(), wal.LSN(start+uint64(len(data))))
		}
	}
}

var t0 = time.Date(2026, 3, 1, 12, 30, 45, 123456000, time.UTC)

func commitEvent(lsn, end uint64, xid uint32, t time.Time) Event {
	return Event{LSN: wal.LSN(lsn), End: wal.LSN(end), Kind: Commit, Time: t, XID: xid}
}

func TestEvents(t *testing.T) {
	b := newBuilder(seg1)
	var want []Event
	for i := range 300 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		lsn, end := b.commit(uint32(1000+i), at)
		want = append(want, commitEvent(lsn, end, uint32(1000+i), at))
		b.filler(50 + i*7)
	}
	lsn, end := b.record(rmXact, xactAbort, 2000, mainData(pgMicros(t0)))
	want = append(want, Event{LSN: wal.LSN(lsn), End: wal.LSN(end), Kind: Abort, Time: t0, XID: 2000})
	lsn, end = b.restorePoint("before the storm", t0)
	want = append(want, Event{LSN: wal.LSN(lsn), End: wal.LSN(end), Kind: RestorePoint, Time: t0, Name: "before the storm"})
	lsn, end = b.record(rmXLOG, xlogEndOfRecovery, 0, mainData(append(append(pgMicros(t0), le32(3)...), le32(2)...)))
	want = append(want, Event{LSN: wal.LSN(lsn), End: wal.LSN(end), Kind: EndOfRecovery, Time: t0, TLI: 3})
	lsn, end = b.record(rmXLOG, xlogBackupEnd, 0, mainData(le64(0x1000028)))
	want = append(want, Event{LSN: wal.LSN(lsn), End: wal.LSN(end), Kind: BackupEnd, BackupStart: 0x1000028})
	// A commit record of 2 MB of invalidations runs across two segments.
	big := append(pgMicros(t0), le32(xinfoInvals)...)
	big = append(big, le32(2<<20/16)...)
	big = append(big, make([]byte, 2<<20)...)
	lsn, end = b.record(rmXact, xactCommit|xactHasInfo, 3000, mainData(big))
	want = append(want, commitEvent(lsn, end, 3000, t0))
	lsn, end = b.commit(3001, t0)
	want = append(want, commitEvent(lsn, end, 3001, t0))
	checkRead(t, seg1, b.buf, want)
}

func TestPrepared(t *testing.T) {
	for _, magic := range []uint16{0xD10D, 0xD110, 0xD113, 0xD116, 0xD118} {
		v := wal.VersionOfPageMagic(magic)
		b := newBuilder(seg1)
		b.magic = magic
		lsn1, end1 := b.record(rmXact, xactCommitPrepared|xactHasInfo, 0, mainData(xactFull(v, CommitPrepared, t0, 4242)))
		lsn2, end2 := b.record(rmXact, xactAbortPrepared|xactHasInfo, 0, mainData(xactFull(v, AbortPrepared, t0, 4343)))
		want := []Event{
			{LSN: wal.LSN(lsn1), End: wal.LSN(end1), Kind: CommitPrepared, Time: t0, XID: 4242},
			{LSN: wal.LSN(lsn2), End: wal.LSN(end2), Kind: AbortPrepared, Time: t0, XID: 4343},
		}
		got, _, err := read(seg1, b.buf, splits["bytes"])
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("PostgreSQL %d: %+v, %v; want %+v", v, got, err, want)
		}
	}
}

func TestHeaderSplitAcrossPages(t *testing.T) {
	b := newBuilder(seg1)
	// The commit starts 8 bytes before the page ends: its length, xid and
	// half its header are on the first page, the rest after the next
	// page's header.
	b.filler(int(b.pageSize) - longPageHeader - 8)
	lsn, end := b.commit(77, t0)
	if lsn != seg1+8192-8 {
		t.Fatalf("commit at %s, want it 8 bytes before the page end", wal.LSN(lsn))
	}
	lsn2, end2 := b.commit(78, t0)
	checkRead(t, seg1, b.buf, []Event{commitEvent(lsn, end, 77, t0), commitEvent(lsn2, end2, 78, t0)})
}

func TestRecordEndsAtPageEnd(t *testing.T) {
	b := newBuilder(seg1)
	b.filler(int(b.pageSize) - longPageHeader - 40)
	lsn, end := b.commit(77, t0) // 34 bytes, padded to the page end
	if end != seg1+8192 {
		t.Fatalf("commit ends at %s, want the page end", wal.LSN(end))
	}
	lsn2, end2 := b.commit(78, t0)
	if lsn2 != end+shortPageHeader {
		t.Fatalf("next commit at %s, want after the page header", wal.LSN(lsn2))
	}
	checkRead(t, seg1, b.buf, []Event{commitEvent(lsn, end, 77, t0), commitEvent(lsn2, end2, 78, t0)})
}

func TestOverwriteContrecord(t *testing.T) {
	b := newBuilder(seg1)
	lsn1, end1 := b.commit(1, t0)
	// A commit that crossed a page when the server crashed: its second part
	// never reached disk, and recovery wrote an XLOG_OVERWRITE_CONTRECORD
	// record where it would have been.
	torn := b.torn(rmXact, xactCommit|xactHasInfo, 2, mainData(append(pgMicros(t0), make([]byte, 9000)...)))
	b.record(rmXLOG, 0xD0, 0, mainData(append(le64(torn), pgMicros(t0)...)))
	lsn3, end3 := b.commit(3, t0)
	checkRead(t, seg1, b.buf, []Event{commitEvent(lsn1, end1, 1, t0), commitEvent(lsn3, end3, 3, t0)})
}

func TestColdStart(t *testing.T) {
	// WAL from the segment before: a record crossing into the next segment
	// and over two more pages, which a Reader starting there skips.
	b := newBuilder(seg1 - 8192)
	b.commit(1, t0)
	b.record(rmXact, xactCommit|xactHasInfo, 2, mainData(append(pgMicros(t0), make([]byte, 3*8192)...)))
	lsn, end := b.commit(3, t0)
	checkRead(t, seg1, b.buf[8192:], []Event{commitEvent(lsn, end, 3, t0)})

	// The continuation may also end exactly at a page end.
	b = newBuilder(seg1 - 8192)
	b.filler(8192 - shortPageHeader - 16)
	b.filler(16 + 8192 - longPageHeader) // ends at the page end
	lsn, end = b.commit(4, t0)
	if lsn != seg1+8192+shortPageHeader {
		t.Fatalf("commit at %s", wal.LSN(lsn))
	}
	checkRead(t, seg1, b.buf[8192:], []Event{commitEvent(lsn, end, 4, t0)})
}

func TestSwitch(t *testing.T) {
	b := newBuilder(seg1)
	lsn1, end1 := b.commit(1, t0)
	sw, swEnd := b.switchSegment()
	lsn2, end2 := b.commit(2, t0)
	if lsn2 != seg1*2+longPageHeader {
		t.Fatalf("commit after switch at %s", wal.LSN(lsn2))
	}
	if sw != end1 || swEnd != sw+24 {
		t.Fatalf("switch at %s..%s", wal.LSN(sw), wal.LSN(swEnd))
	}
	checkRead(t, seg1, b.buf, []Event{commitEvent(lsn1, end1, 1, t0), commitEvent(lsn2, end2, 2, t0)})
}

func TestZeroTail(t *testing.T) {
	b := newBuilder(seg1)
	lsn1, end1 := b.commit(1, t0)
	lsn2, end2 := b.commit(2, t0)
	valid := len(b.buf)
	want := []Event{commitEvent(lsn1, end1, 1, t0), commitEvent(lsn2, end2, 2, t0)}

	// Streaming: the bytes stop where the valid WAL does.
	checkRead(t, seg1, b.buf[:valid], want)

	// A partial segment, padded with zeros: the rest of it is ignored, and
	// reading goes on with the next segment.
	b.zeroTo(b.segEnd())
	checkRead(t, seg1, b.buf, want)
	lsn3, end3 := b.commit(3, t0)
	checkRead(t, seg1, b.buf, append(want, commitEvent(lsn3, end3, 3, t0)))

	// A record running into a page that was never written is dropped.
	b = newBuilder(seg1)
	b.commit(1, t0)
	b.record(rmXact, xactCommit, 2, mainData(append(pgMicros(t0), make([]byte, 9000)...)))
	page2 := seg1 + 8192 - b.start
	clear(b.buf[page2:])
	b.zeroTo(b.segEnd())
	checkRead(t, seg1, b.buf, want[:1])
}

func TestZeroSegment(t *testing.T) {
	// A segment file that was never written, then a real one.
	b := newBuilder(seg1)
	b.zeroTo(2 * seg1)
	lsn, end := b.commit(9, t0)
	checkRead(t, seg1, b.buf, []Event{commitEvent(lsn, end, 9, t0)})
}

func TestEventsClears(t *testing.T) {
	b := newBuilder(seg1)
	b.commit(1, t0)
	r := NewReader(seg1, seg1)
	if _, err := r.Write(b.buf); err != nil {
		t.Fatal(err)
	}
	if got := r.Events(); len(got) != 1 {
		t.Fatalf("Events() = %v", got)
	}
	if got := r.Events(); len(got) != 0 {
		t.Fatalf("second Events() = %v, want none", got)
	}
}

func TestErrors(t *testing.T) {
	// base is WAL of a commit at the start, one across the first page end,
	// and a filler record.
	base := func() (*builder, uint64, uint64) {
		b := newBuilder(seg1)
		first, _ := b.commit(1, t0)
		b.filler(int(b.pageSize) - longPageHeader - 40 - 16)
		second, _ := b.record(rmXact, xactCommit, 2, mainData(append(pgMicros(t0), make([]byte, 64)...)))
		b.filler(100)
		return b, first, second
	}
	page2 := 8192
	cases := []struct {
		name   string
		mutate func(buf []byte, first, second uint64)
		want   string
	}{
		{"bad magic", func(buf []byte, _, _ uint64) { buf[page2] = 0x42 }, "page at 0/102000 has magic D142"},
		{"page address", func(buf []byte, _, _ uint64) { buf[page2+12] = 1 }, "page at 0/102000 says it is at 1/102000"},
		{"unknown page flags", func(buf []byte, _, _ uint64) { buf[page2+2] |= 0x10 }, "page at 0/102000 has unknown flags"},
		{"no contrecord flag", func(buf []byte, _, _ uint64) { buf[page2+2] = 0 }, "record at 0/101FF0 runs past its page, but the page at 0/102000 does not continue it"},
		{"wrong rem_len", func(buf []byte, _, _ uint64) { buf[page2+16]++ }, "record at 0/101FF0 needs 82 more bytes, but the page at 0/102000 continues 83"},
		{"short tot_len", func(buf []byte, first, _ uint64) { buf[first-seg1] = 20 }, "record at 0/100028 has length 20"},
		{"commit CRC", func(buf []byte, first, _ uint64) { buf[first-seg1+30]++ }, "record at 0/100028 (rmgr 1, info 00, 34 bytes) fails its CRC-32C check"},
		{"commit CRC across pages", func(buf []byte, _, _ uint64) { buf[page2+30]++ }, "record at 0/101FF0 (rmgr 1, info 00, 98 bytes) fails its CRC-32C check"},
		{"prev link", func(buf []byte, _, second uint64) { buf[second-seg1+8]++ }, "says the previous record is at"},
		{"segment size", func(buf []byte, _, _ uint64) { buf[34] = 0x20 }, "segment at 0/100000 has 2097152-byte segments, the Reader was made for 1048576"},
		{"page size", func(buf []byte, _, _ uint64) { buf[37] = 0x21 }, "has 8448-byte pages"},
		{"long header elsewhere", func(buf []byte, _, _ uint64) { buf[page2+2] |= longHeaderFlag }, "a long header belongs on a segment's first page"},
	}
	for _, c := range cases {
		b, first, second := base()
		c.mutate(b.buf, first, second)
		for name, split := range splits {
			_, r, err := read(seg1, b.buf, split)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s, %s: got %v, want an error with %q", c.name, name, err, c.want)
				continue
			}
			if _, again := r.Write([]byte{0}); again != err {
				t.Errorf("%s: Write after the error returned %v, want the same error", c.name, again)
			}
		}
	}

	// The CRC of records the Reader does not report is not checked: that is
	// what keeps it cheap.
	b, _, _ := base()
	b.buf[len(b.buf)-1]++
	if _, _, err := read(seg1, b.buf, splits["whole"]); err != nil {
		t.Errorf("damaged filler: %v", err)
	}

	for _, c := range []struct {
		start, segSize uint64
		want           string
	}{
		{seg1 + 8192, seg1, "start 0/102000 is not a segment start; begin at 0/100000"},
		{seg1, 3 << 20, "segment size 3145728"},
	} {
		_, err := NewReader(wal.LSN(c.start), c.segSize).Write(make([]byte, 100))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewReader(%d, %d): %v, want %q", c.start, c.segSize, err, c.want)
		}
	}
}

func TestOtherCluster(t *testing.T) {
	for name, change := range map[string]func(b *builder){
		"version": func(b *builder) { b.magic = 0xD116 },
		"system":  func(b *builder) { b.sysID++ },
	} {
		b := newBuilder(seg1)
		b.commit(1, t0)
		b.zeroTo(b.segEnd())
		change(b)
		b.commit(2, t0)
		if _, _, err := read(seg1, b.buf, splits["whole"]); err == nil || !strings.Contains(err.Error(), "use a new Reader for each cluster") {
			t.Errorf("%s changed: %v", name, err)
		}
	}
}

// blocks is a record body with two block references, the first with a
// compressed image that has a hole, then 8 bytes of main data.
func blocks(bimgInfo uint8, holeLength bool) []byte {
	var h []byte
	h = append(h, 0, bkpHasImage|bkpHasData, 4, 0) // block 0: image and 4 bytes of data
	h = append(h, 100, 0, 10, 0, bimgInfo)         // bimg_len 100, hole_offset 10
	if holeLength {
		h = append(h, 0x10, 0)
	}
	h = append(h, make([]byte, 12)...)                        // relation
	h = append(h, 7, 0, 0, 0)                                 // block number
	h = append(h, 1, bkpSameRel|bkpHasData, 3, 0, 8, 0, 0, 0) // block 1: same relation, 3 bytes of data
	h = append(h, toplevelXID, 1, 2, 3, 4, originID, 9, 9)
	h = append(h, dataShort, 8)
	h = append(h, make([]byte, 100+4+3)...)
	return append(h, pgMicros(t0)...)
}

func TestBlockHeaders(t *testing.T) {
	block := func(id uint8, extra ...byte) []byte { // no image, no data, its own relation
		return append(append([]byte{id, 0, 0, 0}, make([]byte, 16)...), extra...)
	}
	withData := append([]byte{0, bkpHasData, 2, 0}, make([]byte, 16+2)...)
	for _, c := range []struct {
		name    string
		body    []byte
		version int
		mainLen int // -1: want an error
	}{
		{"14 compressed with hole", blocks(0x01|0x02, true), 14, 8},
		{"15 pglz with hole", blocks(0x01|0x04, true), 15, 8},
		{"18 zstd with hole", blocks(0x01|0x10, true), 18, 8},
		{"15 uncompressed with hole", blocks(0x01|0x02, false), 15, 8},
		{"14 uncompressed with hole", blocks(0x01|0x04, false), 14, 8},
		// The same bytes read by the other version's rules do not add up.
		{"14 record as 15", blocks(0x01|0x02, true), 15, -1},
		{"15 record as 14", blocks(0x01|0x04, true), 14, -1},
		{"block data, no main data", withData, 15, 0},
		{"main data only", mainData([]byte{1, 2, 3}), 15, 3},
		{"long main data", mainData(make([]byte, 300)), 15, 300},
		{"nothing", nil, 15, 0},
		{"unknown block id", []byte{40, 0, 0}, 15, -1},
		{"same relation first", []byte{0, bkpSameRel, 0, 0, 0, 0, 0, 0}, 15, -1},
		{"block ids out of order", append(block(1), block(1)...), 15, -1},
		{"data flag without data", []byte{0, bkpHasData, 0, 0}, 15, -1},
		{"data without data flag", []byte{0, 0, 1, 0}, 15, -1},
		{"truncated", block(0)[:10], 15, -1},
		{"more data announced than there is", mainData([]byte{1, 2, 3})[:4], 15, -1},
	} {
		off, err := blockHeaders(c.body, uint32(len(c.body)), c.version)
		switch {
		case c.mainLen == -1 && err == nil:
			t.Errorf("%s: main data at %d, want an error", c.name, off)
		case c.mainLen != -1 && (err != nil || int(off) != len(c.body)-c.mainLen):
			t.Errorf("%s: main data at %d, %v; want %d", c.name, off, err, len(c.body)-c.mainLen)
		}
	}
	// Headers longer than any PostgreSQL writes.
	long := bytes.Repeat([]byte{toplevelXID, 0, 0, 0, 0}, 300)
	if _, err := blockHeaders(long[:headMax], uint32(len(long)), 15); err == nil || !strings.Contains(err.Error(), "longer than PostgreSQL writes") {
		t.Errorf("long headers: %v", err)
	}
}

// TestBlockRecord reads a record with block references of interest to
// nobody but a test that checks every record.
func TestBlockRecord(t *testing.T) {
	b := newBuilder(seg1)
	lsn, end := b.record(rmXact, xactCommit, 5, blocks(0x01|0x04, true))
	b.commit(6, t0)
	r := NewReader(seg1, seg1)
	r.all = true
	var seen []wal.LSN
	r.seen = func(lsn wal.LSN, _, _ uint8, _ uint32) { seen = append(seen, lsn) }
	if _, err := r.Write(b.buf); err != nil {
		t.Fatal(err)
	}
	ev := r.Events()
	if len(ev) != 2 || ev[0] != commitEvent(lsn, end, 5, t0) || len(seen) != 2 {
		t.Errorf("events %+v, seen %v", ev, seen)
	}
	binary.LittleEndian.PutUint16(b.buf[lsn-seg1+recordHeader+2:], 0) // block 0 loses its data
	fixCRC(b.buf[lsn-seg1:], int(binary.LittleEndian.Uint32(b.buf[lsn-seg1:])))
	if _, _, err := read(seg1, b.buf, splits["whole"]); err == nil || !strings.Contains(err.Error(), "record at 0/100028: block with flags 30 has 0 bytes of data") {
		t.Errorf("bad block header: %v", err)
	}
}

// fixCRC recomputes the CRC of the n-byte record at the start of rec, which
// lies on one page.
func fixCRC(rec []byte, n int) {
	crc := crc32.Update(0, castagnoli, rec[recordHeader:n])
	crc = crc32.Update(crc, castagnoli, rec[:crcOffset])
	binary.LittleEndian.PutUint32(rec[crcOffset:], crc)
}

func TestKindString(t *testing.T) {
	if Commit.String() != "commit" || BackupEnd.String() != "backup end" || Kind(99).String() != "Kind(99)" {
		t.Error(Commit, BackupEnd, Kind(99))
	}
}
