package catalog

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/walship/walship/internal/wal"
)

// FuzzParseBackup checks that ParseBackup never panics on what a
// repository may hold as backup.json, and that what it accepts is a
// backup walship would write and read back unchanged: its archives' parts
// in order and named as WriteBackup names them.
func FuzzParseBackup(f *testing.F) {
	one := sampleBackup("20261128T101500.000Z")
	parts := sampleBackup("20261128T101500.000Z")
	parts.Objects = []BackupObject{
		{Name: "base.tar", Size: 1}, {Name: "base.1.tar", Part: 1, Size: 2},
		{Name: "16385.tar", OID: 16385, Location: "/srv/ts"}, {Name: "16385.1.tar", OID: 16385, Location: "/srv/ts", Part: 1},
		{Name: ManifestName},
	}
	for _, b := range []Backup{one, parts} {
		data, err := json.MarshalIndent(b, "", "  ")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		`{"format":2,"id":"20261128T101500.000Z","start_lsn":"0/3000028","end_lsn":"0/3000138","start_timeline":1,"end_timeline":1,"wal_segment_size":16777216,` +
			`"objects":[{"name":"base.1.tar","part":1},{"name":"base.tar"}]}`,
		`{"format":2,"id":"20261128T101500.000Z","start_lsn":"0/3000028","end_lsn":"0/3000138","start_timeline":1,"end_timeline":1,"wal_segment_size":16777216,` +
			`"objects":[{"name":"base.tar"},{"name":"base.2.tar","part":2}]}`,
		`{"format":1,"id":"20261128T101500.000Z","start_lsn":"0/3000028","end_lsn":"0/3000138","start_timeline":1,"end_timeline":1,"wal_segment_size":16777216,` +
			`"start_time":"2026-11-28T10:15:00+01:00","objects":[{"name":"../base.tar"}]}`,
		`{"format":3}`, `{"format":1,"start_lsn":"0/0","end_lsn":"0/0"}`, `null`, `[]`, `{"objects":[{"part":-1}]}`, ``,
		`{"format":1,"id":"20261128T101500.000Z","start_lsn":"0/1","end_lsn":"0/0","start_timeline":1,"end_timeline":1,"wal_segment_size":16777216}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBackup(data)
		if err != nil {
			return
		}
		for _, parts := range b.Archives() {
			for i, o := range parts {
				if o.Part != i || o.Name != PartName(parts[0].Name, i) || o.OID != parts[0].OID {
					t.Fatalf("ParseBackup accepted archive %+v", parts)
				}
			}
		}
		out, err := json.MarshalIndent(b, "", "  ")
		if err != nil {
			t.Fatalf("ParseBackup accepted a backup.json that cannot be written back: %v", err)
		}
		again, err := ParseBackup(out)
		if err != nil {
			t.Fatalf("ParseBackup accepted %q but not its own rewriting %q: %v", data, out, err)
		}
		if out2, _ := json.MarshalIndent(again, "", "  "); !bytes.Equal(out, out2) || !again.StartTime.Equal(b.StartTime) {
			t.Fatalf("rewriting changed backup.json:\n%s\n%s", out, out2)
		}
	})
}

// FuzzParseMeta checks that parseMeta never panics on what a store may
// hold as walship.json, and that what it accepts reads back unchanged once
// Init writes it.
func FuzzParseMeta(f *testing.F) {
	f.Add(encodeMeta(Meta{Format: 1, SystemID: "7441337033001234567", SegmentSize: 16 << 20, Created: time.Date(2026, 11, 28, 10, 15, 0, 0, time.UTC)}))
	f.Add(encodeMeta(Meta{Format: 1, SystemID: "1", SegmentSize: 1 << 20, Recipients: []string{"age1xyz"}}))
	for _, s := range []string{
		`{"format":2,"system_identifier":"1","wal_segment_size":1048576}`,
		`{"format":1,"system_identifier":"18446744073709551616","wal_segment_size":1048576}`,
		`{"format":1,"system_identifier":"-1","wal_segment_size":1048576}`,
		`{"format":1,"system_identifier":"1","wal_segment_size":3145728}`,
		`{"format":1,"system_identifier":"1","wal_segment_size":1048576,"created":"2026-11-28T10:15:00.5-07:00"}`,
		`{"format":1,"system_identifier":"1","wal_segment_size":1048576} trailing`,
		`{"FORMAT":1,"System_Identifier":"1","wal_segment_size":1048576}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseMeta(data)
		if err != nil {
			return
		}
		out, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatalf("parseMeta accepted a walship.json that cannot be written back: %v", err)
		}
		again, err := parseMeta(encodeMeta(m))
		if err != nil {
			t.Fatalf("parseMeta accepted %q but not its own rewriting %q: %v", data, out, err)
		}
		if Compatible(again, m) != nil || !again.Created.Equal(m.Created) || len(again.Recipients) != len(m.Recipients) {
			t.Fatalf("rewriting changed walship.json: %+v, then %+v", m, again)
		}
	})
}

// FuzzParseWALKey checks that ParseWALKey never panics on a key a listing
// of wal/ returns, and that a key it accepts is the one walship writes for
// what it parsed: no two keys for one object.
func FuzzParseWALKey(f *testing.F) {
	seg := wal.Segment{TLI: 2, No: 0x1FF}
	for _, k := range []string{
		SegmentKey(seg, 16<<20), PieceKey(seg, 16<<20, 0, 0x2000), PieceKey(seg, 16<<20, 0x2000, 16<<20), PartialKey(seg, 16<<20),
		GapKey(seg, 16<<20), SegmentKey(seg, 16<<20) + ".idx", BackupKey(seg, 16<<20, 0x28), HistoryKey(2),
		"wal/00000002/0000000200000001000000FF.pieces/00002000-00001000", "wal/00000002/0000000200000001000000FF.pieces/0000000a-000000ff",
		"wal/00000003/0000000200000001000000FF", "wal/00000002/0000000200000001000000FF.partial/x", "wal/00000002.history/x",
		"wal/0000000200000001000000FF", "backups/x", "wal/", "",
	} {
		f.Add(k, uint8(24))
	}
	f.Fuzz(func(t *testing.T, key string, sizeExp uint8) {
		segSize := uint64(1) << (sizeExp % 64)
		o, err := ParseWALKey(key, segSize)
		if err != nil {
			return
		}
		var want string
		switch o.Kind {
		case Segment:
			want = SegmentKey(o.Segment, segSize)
		case Piece:
			if o.Start >= o.End || uint64(o.End) > segSize {
				t.Fatalf("ParseWALKey(%q) = %+v: an empty piece or one past the segment", key, o)
			}
			want = PieceKey(o.Segment, segSize, o.Start, o.End)
		case Partial:
			want = PartialKey(o.Segment, segSize)
		case Gap:
			want = GapKey(o.Segment, segSize)
		case Index:
			want = SegmentKey(o.Segment, segSize) + ".idx"
		case BackupHistory:
			want = BackupKey(o.Segment, segSize, o.Offset)
		case History:
			want = HistoryKey(o.TLI)
		default:
			t.Fatalf("ParseWALKey(%q) = %+v: unknown kind", key, o)
		}
		if want != key || o.Key != key || o.Kind != History && o.TLI != o.Segment.TLI {
			t.Fatalf("ParseWALKey(%q, %d) = %+v, whose key is %q", key, segSize, o, want)
		}
	})
}
