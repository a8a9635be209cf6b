package catalog

import (
	"reflect"
	"testing"
	"time"

	"github.com/walship/walship/internal/walrec"
)

func TestIndexRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 8, 0, 0, 123456000, time.UTC)
	events := []walrec.Event{
		{LSN: 0x1000028, End: 0x1000050, Kind: walrec.Commit, Time: t0, XID: 750},
		{LSN: 0x1000050, End: 0x1000080, Kind: walrec.Abort, Time: t0.Add(-time.Millisecond), XID: 751},
		{LSN: 0x10000A0, End: 0x10000D0, Kind: walrec.RestorePoint, Time: t0.Add(time.Second), Name: "before the migration"},
		{LSN: 0x1002000, End: 0x1002030, Kind: walrec.BackupEnd, BackupStart: 0x1000028},
		{LSN: 0x1003000, End: 0x1003070, Kind: walrec.EndOfRecovery, Time: t0.Add(2 * time.Second), TLI: 3},
		{LSN: 0x1003070, End: 0x10030A0, Kind: walrec.CommitPrepared, Time: t0.Add(2 * time.Second), XID: 1<<32 - 1},
	}
	b := EncodeIndex(events)
	got, err := DecodeIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, events) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, events)
	}
	if got, err := DecodeIndex(EncodeIndex(nil)); err != nil || len(got) != 0 {
		t.Errorf("empty index = %v, %v", got, err)
	}
	for i := range len(b) {
		if _, err := DecodeIndex(b[:i]); err == nil {
			t.Errorf("a truncation to %d bytes decoded", i)
		}
	}
	if _, err := DecodeIndex(append(b, 0)); err == nil {
		t.Error("trailing bytes decoded")
	}
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add(EncodeIndex([]walrec.Event{{LSN: 40, End: 80, Kind: walrec.Commit, Time: time.Unix(1e9, 0), XID: 3}}))
	f.Add(EncodeIndex([]walrec.Event{{LSN: 40, End: 80, Kind: walrec.RestorePoint, Name: "x"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := DecodeIndex(b)
		if err != nil {
			return
		}
		again, err := DecodeIndex(EncodeIndex(events))
		if err != nil || !reflect.DeepEqual(again, events) {
			t.Errorf("re-encoding changed the index: %v", err)
		}
	})
}
