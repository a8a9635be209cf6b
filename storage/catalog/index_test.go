package catalog

import (
	"encoding/binary"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/walship/walship/internal/walrec"
)

var indexT0 = time.Date(2026, 11, 28, 8, 0, 0, 123456000, time.UTC)

// indexEvents are events of every kind, as testdata/index-v1.idx holds them.
var indexEvents = []walrec.Event{
	{LSN: 0x1000028, End: 0x1000050, Kind: walrec.Commit, Time: indexT0, XID: 750},
	{LSN: 0x1000050, End: 0x1000080, Kind: walrec.Abort, Time: indexT0.Add(-time.Millisecond), XID: 751},
	{LSN: 0x10000A0, End: 0x10000D0, Kind: walrec.RestorePoint, Time: indexT0.Add(time.Second), Name: "before the migration"},
	{LSN: 0x1002000, End: 0x1002030, Kind: walrec.BackupEnd, BackupStart: 0x1000028},
	{LSN: 0x1003000, End: 0x1003070, Kind: walrec.EndOfRecovery, Time: indexT0.Add(2 * time.Second), TLI: 3},
	{LSN: 0x1003070, End: 0x10030A0, Kind: walrec.CommitPrepared, Time: indexT0.Add(2 * time.Second), XID: 1<<32 - 1},
}

// recordCarry is the carry of a segment ending at 0/2000000 in the middle of
// a record of interest that started 24 bytes before, as walrec encodes it.
func recordCarry(t testing.TB) walrec.Carry {
	b := []byte{4}                           // a record's bytes
	b = binary.AppendUvarint(b, 0x2000000)   // taken at the segment end
	b = binary.AppendUvarint(b, 0xD110)      // page magic
	b = binary.AppendUvarint(b, 8192)        // page size
	b = binary.AppendUvarint(b, 73012345678) // system identifier
	b = binary.AppendUvarint(b, 64)          // the record before started 64 bytes before the end
	b = binary.AppendUvarint(b, 24)          // this one 24 bytes before
	b = append(b, make([]byte, 24)...)
	c, err := walrec.ParseCarry(b)
	if err != nil || !c.Known() {
		t.Fatalf("ParseCarry: %v, %v", c, err)
	}
	return c
}

func TestIndexRoundTrip(t *testing.T) {
	for _, carry := range []walrec.Carry{{}, recordCarry(t)} {
		b := EncodeIndex(indexEvents, carry)
		got, gotCarry, err := DecodeIndex(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, indexEvents) || !reflect.DeepEqual(gotCarry, carry) {
			t.Errorf("round trip:\n got %+v, %v\nwant %+v, %v", got, gotCarry, indexEvents, carry)
		}
		if got, gotCarry, err := DecodeIndex(EncodeIndex(nil, carry)); err != nil || len(got) != 0 || !reflect.DeepEqual(gotCarry, carry) {
			t.Errorf("empty index = %v, %v, %v", got, gotCarry, err)
		}
		for i := range len(b) {
			if _, _, err := DecodeIndex(b[:i]); err == nil {
				t.Errorf("a truncation to %d bytes decoded", i)
			}
		}
		if _, _, err := DecodeIndex(append(b, 0)); err == nil {
			t.Error("trailing bytes decoded")
		}
	}
}

// TestIndexVersion1 decodes an index the first format wrote, without a
// carry.
func TestIndexVersion1(t *testing.T) {
	b, err := os.ReadFile("testdata/index-v1.idx")
	if err != nil {
		t.Fatal(err)
	}
	got, carry, err := DecodeIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, indexEvents) || carry.Known() {
		t.Errorf("version 1: %+v, carry %v; want %+v and no carry", got, carry, indexEvents)
	}
	if _, _, err := DecodeIndex(append(b, 0)); err == nil {
		t.Error("a version 1 index with a trailing byte decoded")
	}
	for _, v := range []byte{0, 3} {
		b[4] = v
		if _, _, err := DecodeIndex(b); err == nil {
			t.Errorf("version %d decoded", v)
		}
	}
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add(EncodeIndex([]walrec.Event{{LSN: 40, End: 80, Kind: walrec.Commit, Time: time.Unix(1e9, 0), XID: 3}}, walrec.Carry{}))
	f.Add(EncodeIndex([]walrec.Event{{LSN: 40, End: 80, Kind: walrec.RestorePoint, Name: "x"}}, walrec.Carry{}))
	f.Add(EncodeIndex(indexEvents[:2], recordCarry(f)))
	if v1, err := os.ReadFile("testdata/index-v1.idx"); err == nil {
		f.Add(v1)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		events, carry, err := DecodeIndex(b)
		if err != nil {
			return
		}
		again, againCarry, err := DecodeIndex(EncodeIndex(events, carry))
		if err != nil || !reflect.DeepEqual(again, events) || !reflect.DeepEqual(againCarry, carry) {
			t.Errorf("re-encoding changed the index: %v", err)
		}
	})
}
