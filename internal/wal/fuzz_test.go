package wal

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseFileName checks that a file name PostgreSQL could pass to
// archive_command or restore_command parses without panicking, and that a
// name that parses is the one walship would write for what it parsed: no
// two spellings of one file.
func FuzzParseFileName(f *testing.F) {
	for _, s := range []string{
		"000000010000000000000001", "0000000100000016000000B3", "FFFFFFFFFFFFFFFF000000FF",
		"000000010000000000000001.partial", "000000010000000000000001.00000028.backup",
		"00000002.history", "0000000A.history", "00000000.history", "0000000a.history",
		"000000000000000000000001", "000000010000000000000100", "00000001000000000000000g",
		"000000010000000000000001.", "000000010000000000000001.partial.partial",
		"000000010000000000000001.01000000.backup", "000000010000000000000001.0000002.backup",
		"00000001.history.partial", "+0000001.history", "0x000001.history", "",
	} {
		f.Add(s, uint8(24))
	}
	f.Add("000000010000000100000000", uint8(20))
	f.Add("000000030000000100000001", uint8(30))
	f.Add("000000010000000000001000", uint8(20))
	f.Fuzz(func(t *testing.T, name string, sizeExp uint8) {
		segSize := uint64(1) << (sizeExp % 64)
		file, err := ParseFileName(name, segSize)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "wal: file name ") {
				t.Errorf("ParseFileName(%q, %d): error %q does not say what it is about", name, segSize, err)
			}
			return
		}
		if !ValidSegmentSize(segSize) {
			t.Fatalf("ParseFileName(%q, %d) accepted an invalid segment size", name, segSize)
		}
		if file.TLI == 0 {
			t.Fatalf("ParseFileName(%q) = %+v: timeline 0", name, file)
		}
		var want string
		switch file.Kind {
		case KindHistory:
			want = HistoryFileName(file.TLI)
		case KindSegment:
			want = file.Segment.Name(segSize)
		case KindPartial:
			want = file.Segment.Name(segSize) + ".partial"
		case KindBackup:
			if uint64(file.Offset) >= segSize {
				t.Fatalf("ParseFileName(%q) = %+v: offset beyond the segment", name, file)
			}
			want = fmt.Sprintf("%s.%08X.backup", file.Segment.Name(segSize), file.Offset)
		default:
			t.Fatalf("ParseFileName(%q) = %+v: unknown kind", name, file)
		}
		if file.Kind != KindHistory && file.Segment.TLI != file.TLI {
			t.Fatalf("ParseFileName(%q) = %+v: two timelines", name, file)
		}
		if want != name {
			t.Fatalf("ParseFileName(%q, %d) = %+v, which is named %q", name, segSize, file, want)
		}
	})
}

// FuzzParseLSN checks that ParseLSN never panics and that what it accepts
// prints back as the same LSN, in PostgreSQL's spelling up to case and
// leading zeros.
func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{
		"0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1000000", "00000000/00000001", "16/b374d848",
		"", "0", "/1", "1/", "G/0", "123456789/0", "0/-1", "1/2/3", "+1/0", "0x1/0", "1_0/0", " 1/0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lsn, err := ParseLSN(s)
		if err != nil {
			return
		}
		again, err := ParseLSN(lsn.String())
		if err != nil || again != lsn {
			t.Fatalf("ParseLSN(%q) = %v, whose String %q parses as %v, %v", s, lsn, lsn.String(), again, err)
		}
		hi, lo, _ := strings.Cut(strings.ToUpper(s), "/")
		norm := func(h string) string {
			if h = strings.TrimLeft(h, "0"); h == "" {
				return "0"
			}
			return h
		}
		if want := norm(hi) + "/" + norm(lo); lsn.String() != want {
			t.Fatalf("ParseLSN(%q) = %v, want %s", s, lsn, want)
		}
	})
}

// FuzzParseHistory checks that ParseHistory never panics, that what it
// accepts keeps PostgreSQL's order, and that the entries written back in
// PostgreSQL's format parse to the same entries.
func FuzzParseHistory(f *testing.F) {
	for _, s := range []string{
		"1\t0/3000000\tno recovery target specified\n",
		"1\t0/3000000\tno recovery target specified\n\n2\t0/5000158\tat restore point \"before\"\n",
		"# comment\n  1 0/3000000 reason with  two spaces \r\n",
		"1\t0/3000000\n2\t0/3000000\n",
		"2\t0/5000000\tx\n1\t0/6000000\ty\n",
		"1\t0/6000000\tx\n2\t0/5000000\ty\n",
		"0\t0/0\tx\n", "1\n", "1\tzz\n", "x\t0/0\n", "1\t0/0\t0/0 twice 0/0\n",
		"4294967295\tFFFFFFFF/FFFFFFFF\tlast\n", "4294967296\t0/0\n", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseHistory(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "wal: history") {
				t.Errorf("ParseHistory: error %q does not say what it is about", err)
			}
			return
		}
		var sb strings.Builder
		for i, e := range entries {
			if e.TLI == 0 || i > 0 && (e.TLI <= entries[i-1].TLI || e.Switch < entries[i-1].Switch) {
				t.Fatalf("ParseHistory accepted entries out of order: %+v", entries)
			}
			if e.Reason != strings.TrimSpace(e.Reason) || strings.ContainsAny(e.Reason, "\n") {
				t.Fatalf("entry %d: reason %q not trimmed to one line", i, e.Reason)
			}
			fmt.Fprintf(&sb, "%d\t%s\t%s\n", e.TLI, e.Switch, e.Reason)
		}
		again, err := ParseHistory([]byte(sb.String()))
		if err != nil || len(again) != len(entries) || len(entries) > 0 && !reflect.DeepEqual(again, entries) {
			t.Fatalf("entries %+v written back as %q parse as %+v, %v", entries, sb.String(), again, err)
		}
	})
}
