package walrec

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/walship/walship/internal/wal"
)

// padTo appends filler records until the next record starts at lsn, or, if
// lsn is a page's end, until a record ends there.
func (b *builder) padTo(lsn uint64) {
	for {
		for b.pos()%8 != 0 {
			b.buf = append(b.buf, 0)
		}
		pos := b.pos()
		pageEnd := (pos/b.pageSize + 1) * b.pageSize
		next := uint64(shortPageHeader) // the next page's header
		if pageEnd%b.segSize == 0 {
			next = longPageHeader
		}
		switch {
		case pos == lsn:
			return
		case pos > lsn:
			panic("padTo: past the target")
		case pos%b.pageSize == 0:
			b.pageHeader(0, 0)
		case lsn <= pageEnd:
			b.filler(int(lsn - pos))
		case lsn <= pageEnd+b.pageSize:
			b.filler(int(lsn - pos - next))
		case pageEnd-pos >= 32:
			b.filler(int(pageEnd - pos))
		default:
			b.filler(int(pageEnd - pos + 64))
		}
	}
}

// feed writes data to r in pieces of the sizes split returns and returns
// the events.
func feed(t *testing.T, r *Reader, data []byte, split func(int) int) []Event {
	t.Helper()
	var events []Event
	for len(data) > 0 {
		n := min(split(len(data)), len(data))
		if _, err := r.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		events = append(events, r.Events()...)
		data = data[n:]
	}
	return events
}

// readChain reads data, which starts at a segment start, one segment at a
// time: each Reader is made from the binary form of the Carry of the one
// before or, when that is unknown, fed the segment before. It returns the
// events and the Carries.
func readChain(t *testing.T, start wal.LSN, segSize uint64, data []byte, split func(int) int) ([]Event, []Carry) {
	t.Helper()
	var events []Event
	var carries []Carry
	r := NewReader(start, segSize)
	for off := uint64(0); off < uint64(len(data)); off += segSize {
		seg := data[off:min(off+segSize, uint64(len(data)))]
		events = append(events, feed(t, r, seg, split)...)
		if uint64(len(seg)) < segSize {
			break
		}
		c := r.Carry()
		carries = append(carries, c)
		parsed, err := ParseCarry(c.Append(nil))
		if err != nil || !reflect.DeepEqual(parsed, c) {
			t.Fatalf("carry at %s: %v through its binary form: %v, %v", start+wal.LSN(off+segSize), c, parsed, err)
		}
		next := start + wal.LSN(off+segSize)
		if r, err = NewReaderFrom(next, segSize, parsed); err != nil {
			if c.Known() {
				t.Fatalf("carry at %s: %v: %v", next, c, err)
			}
			r = NewReader(next-wal.LSN(segSize), segSize)
			feed(t, r, seg, split)
		}
	}
	return events, carries
}

func TestCarry(t *testing.T) {
	b := newBuilder(seg1)
	b.commit(1, t0)
	// A commit whose header runs into the next segment.
	b.padTo(b.segEnd() - 16)
	b.commit(2, t0)
	// A restore point whose data does.
	b.padTo(b.segEnd() - 48)
	b.restorePoint("across", t0)
	// A record of no interest.
	b.padTo(b.segEnd() - 1000)
	b.filler(3000)
	// A record that ends at the segment's end.
	b.commit(3, t0)
	b.padTo(b.segEnd())
	// A commit larger than CarryMax.
	b.commit(4, t0)
	b.padTo(b.segEnd() - 80000)
	big := append(pgMicros(t0), le32(xinfoInvals)...)
	big = append(big, le32(100000/16)...)
	b.record(rmXact, xactCommit|xactHasInfo, 5, mainData(append(big, make([]byte, 100000)...)))
	// A segment switch.
	b.commit(6, t0)
	b.switchSegment()
	// The end of valid WAL in the middle of a segment.
	b.commit(7, t0)
	b.zeroTo(b.segEnd())
	// A record of no interest over a whole segment, then a commit into the
	// next segment.
	b.commit(8, t0)
	b.filler(2*int(b.segSize) + 5000)
	b.padTo(b.segEnd() - 32)
	b.commit(9, t0)
	b.commit(10, t0)
	b.zeroTo(b.segEnd())

	want, _, err := read(seg1, b.buf, splits["whole"])
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 11 {
		t.Fatalf("%d events, want 11", len(want))
	}
	kinds := []carryKind{carryRecord, carryRecord, carrySkip, carryBoundary, carryUnknown, carryBoundary, carryCold, carrySkip, carrySkip, carryRecord, carryCold}
	for name, split := range splits {
		got, carries := readChain(t, seg1, seg1, b.buf, split)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: events\n got %+v\nwant %+v", name, got, want)
		}
		var gotKinds []carryKind
		for _, c := range carries {
			gotKinds = append(gotKinds, c.kind)
		}
		if !reflect.DeepEqual(gotKinds, kinds) {
			t.Errorf("%s: carries %v, want kinds %v", name, carries, kinds)
		}
		if c := carries[0]; len(c.data) != 16 || c.start != 2*seg1-16 {
			t.Errorf("%s: the carry of a split header is %v", name, c)
		}
	}
}

// TestCarryOnlyAtSegmentEnds: a Reader that has read nothing, stands inside
// a segment or failed has no carry; one made from a carry gives it back.
func TestCarryOnlyAtSegmentEnds(t *testing.T) {
	b := newBuilder(seg1)
	b.commit(1, t0)
	b.padTo(b.segEnd() - 24)
	b.commit(2, t0)
	b.commit(3, t0)
	r := NewReader(seg1, seg1)
	if r.Carry().Known() {
		t.Error("a Reader that read nothing has a carry")
	}
	feed(t, r, b.buf[:seg1/2], splits["whole"])
	if r.Carry().Known() {
		t.Error("a Reader inside a segment has a carry")
	}
	feed(t, r, b.buf[seg1/2:seg1], splits["whole"])
	c := r.Carry()
	if c.kind != carryRecord || len(c.data) != 24 {
		t.Fatalf("carry %v, want the 24 bytes of a commit's header", c)
	}
	r2, err := NewReaderFrom(2*seg1, seg1, c)
	if err != nil {
		t.Fatal(err)
	}
	if again := r2.Carry(); !reflect.DeepEqual(again, c) {
		t.Errorf("the carry of a Reader made from %v is %v", c, again)
	}
	if _, err := r.Write(bytes.Repeat([]byte{0x42}, longPageHeader)); err == nil {
		t.Fatal("a page of magic 0042 read")
	}
	if r.Carry().Known() {
		t.Error("a Reader that failed has a carry")
	}
}

func TestCarryErrors(t *testing.T) {
	b := newBuilder(seg1)
	b.commit(1, t0)
	before, _ := b.commit(2, t0)
	b.padTo(b.segEnd() - 48)
	b.record(rmXact, xactCommit, 3, mainData(append(pgMicros(t0), make([]byte, 64)...)))
	b.filler(100)
	r := NewReader(seg1, seg1)
	feed(t, r, b.buf[:seg1], splits["whole"])
	good := r.Carry()
	if good.kind != carryRecord {
		t.Fatalf("carry %v", good)
	}
	next := wal.LSN(2 * seg1)

	withData := func(start wal.LSN) Carry {
		c := good
		c.start, c.prev, c.data = start, 0, b.buf[start-seg1:seg1]
		return c
	}
	for _, c := range []struct {
		name  string
		carry Carry
		at    wal.LSN
		want  string
	}{
		{"unknown", Carry{}, next, "no carry from the segment before"},
		{"another segment", good, next + seg1, "the carry is of the segment ending at 0/200000, not at 0/300000"},
		{"magic", func() Carry { c := good; c.magic = 0x4242; return c }(), next, "page magic 4242"},
		{"page size", func() Carry { c := good; c.pageSize = 3000; return c }(), next, "3000-byte pages"},
		{"prev link", func() Carry { c := good; c.prev = wal.LSN(before); return c }(), next, "says the previous record is at"},
		{"a record before", withData(wal.LSN(before)), next, "does not end inside the record at"},
		{"unaligned", withData(seg1*2 - 44), next, "where none can start"},
		{"bad segment size", good, next, "segment size 3145728"},
	} {
		segSize := uint64(seg1)
		if c.name == "bad segment size" {
			segSize = 3 << 20
		}
		_, err := NewReaderFrom(c.at, segSize, c.carry)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}

	// Carries that do not match the next segment fail on its first page.
	for _, c := range []struct {
		name  string
		carry Carry
		want  string
	}{
		{"skip too short", Carry{kind: carrySkip, end: next, magic: good.magic, pageSize: good.pageSize, rest: 3}, "needs 3 more bytes, but the page at 0/200000 continues"},
		{"boundary", Carry{kind: carryBoundary, end: next, magic: good.magic, pageSize: good.pageSize}, "page at 0/200000 continues a record, but none is pending"},
		{"other system", func() Carry { c := good; c.sysID++; return c }(), "belongs to system"},
	} {
		r, err := NewReaderFrom(next, seg1, c.carry)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if _, err := r.Write(b.buf[seg1:]); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}

func TestParseCarry(t *testing.T) {
	b := newBuilder(seg1)
	b.padTo(2*seg1 - 40)
	b.restorePoint("carried", t0)
	r := NewReader(seg1, seg1)
	feed(t, r, b.buf[:seg1], splits["whole"])
	for _, c := range []Carry{
		r.Carry(),
		{kind: carryCold, end: 1 << 30},
		{kind: carryBoundary, end: 1 << 30, magic: 0xD118, pageSize: 8192, sysID: 1<<64 - 1, prev: 1<<30 - 80},
		{kind: carrySkip, end: 1 << 30, magic: 0xD10D, pageSize: 1 << 16, rest: 1<<32 - 1},
		{kind: carrySkip, end: 1 << 30, magic: 0xD10D, pageSize: 1 << 16, start: 1<<30 - 8, rest: 100},
	} {
		enc := c.Append(nil)
		got, err := ParseCarry(enc)
		if err != nil || !reflect.DeepEqual(got, c) {
			t.Errorf("%v: parsed %v, %v", c, got, err)
		}
		for i := range len(enc) - 1 {
			if _, err := ParseCarry(enc[:i+1]); err == nil {
				t.Errorf("%v: a truncation to %d bytes parsed", c, i+1)
			}
		}
		if _, err := ParseCarry(append(enc, 0)); err == nil {
			t.Errorf("%v: a trailing byte parsed", c)
		}
	}
	if c, err := ParseCarry(nil); err != nil || c.Known() {
		t.Errorf("no bytes: %v, %v", c, err)
	}
}

// FuzzCarry: ParseCarry and NewReaderFrom do not panic, and what parses
// encodes to what parses the same.
func FuzzCarry(f *testing.F) {
	b := newBuilder(seg1)
	b.padTo(2*seg1 - 40)
	b.commit(1, t0)
	b.commit(2, t0)
	r := NewReader(seg1, seg1)
	if _, err := r.Write(b.buf[:seg1]); err != nil {
		f.Fatal(err)
	}
	f.Add(r.Carry().Append(nil), b.buf[seg1:])
	f.Add(Carry{kind: carrySkip, end: 2 * seg1, magic: 0xD110, pageSize: 8192, rest: 10}.Append(nil), b.buf[seg1:])
	f.Fuzz(func(t *testing.T, enc, next []byte) {
		c, err := ParseCarry(enc)
		if err != nil {
			return
		}
		if again, err := ParseCarry(c.Append(nil)); err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("%v encodes to what parses as %v, %v", c, again, err)
		}
		r, err := NewReaderFrom(c.end, seg1, c)
		if err != nil {
			return
		}
		r.Write(next)
		r.Events()
	})
}
