package wal

import (
	"strings"
	"testing"
)

func TestLSN(t *testing.T) {
	for in, want := range map[string]LSN{"0/0": 0, "16/B374D848": 0x16B374D848, "FFFFFFFF/FFFFFFFF": 1<<64 - 1, "0/1000000": 1 << 24} {
		got, err := ParseLSN(in)
		if err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v", in, got, err, want)
		}
		if strings.ToUpper(in) != got.String() {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), in)
		}
	}
	for _, in := range []string{"", "0", "/1", "1/", "G/0", "123456789/0", "0/-1", "1/2/3"} {
		if _, err := ParseLSN(in); err == nil {
			t.Errorf("ParseLSN(%q) succeeded", in)
		}
	}
}

func TestSegmentNames(t *testing.T) {
	cases := []struct {
		seg     Segment
		segSize uint64
		name    string
	}{
		{Segment{1, 1}, 16 << 20, "000000010000000000000001"},
		{Segment{1, 0x100}, 16 << 20, "000000010000000100000000"},
		{Segment{2, 0x1FF}, 16 << 20, "0000000200000001000000FF"},
		{Segment{1, 4096}, 1 << 20, "000000010000000100000000"},
		{Segment{0xA, 4097}, 1 << 20, "0000000A0000000100000001"},
		{Segment{3, 5}, 1 << 30, "000000030000000100000001"},
	}
	for _, c := range cases {
		if got := c.seg.Name(c.segSize); got != c.name {
			t.Errorf("%+v.Name(%d) = %s, want %s", c.seg, c.segSize, got, c.name)
		}
		f, err := ParseFileName(c.name, c.segSize)
		if err != nil || f.Kind != KindSegment || f.Segment != c.seg {
			t.Errorf("ParseFileName(%s) = %+v, %v; want %+v", c.name, f, err, c.seg)
		}
	}
	if got := SegmentOf(1, 0x16B374D848, 16<<20); got.Name(16<<20) != "0000000100000016000000B3" {
		t.Errorf("SegmentOf = %s", got.Name(16<<20))
	}
	if got := (Segment{1, 0xB3 + 0x16*256}).Start(16 << 20); got != 0x16B3000000 {
		t.Errorf("Start = %v", got)
	}
}

func TestParseFileName(t *testing.T) {
	f, err := ParseFileName("00000002.history", 16<<20)
	if err != nil || f.Kind != KindHistory || f.TLI != 2 {
		t.Errorf("history: %+v, %v", f, err)
	}
	f, err = ParseFileName("000000010000000000000003.partial", 16<<20)
	if err != nil || f.Kind != KindPartial || f.Segment.No != 3 {
		t.Errorf("partial: %+v, %v", f, err)
	}
	f, err = ParseFileName("000000010000000000000003.00000028.backup", 16<<20)
	if err != nil || f.Kind != KindBackup || f.Offset != 0x28 {
		t.Errorf("backup: %+v, %v", f, err)
	}
	for _, bad := range []string{
		"", "x", "00000000.history", "0000000g.history", "00000001.History",
		"00000001000000000000000", "0000000100000000000000001", "000000000000000000000001",
		"00000001000000000000000a", "000000010000000000000100", // seg part beyond 256 at 16 MB
		"000000010000000000000001.part", "000000010000000000000001.", "../000000010000000000000001",
		"000000010000000000000001.01000028.backup",
	} {
		if _, err := ParseFileName(bad, 16<<20); err == nil {
			t.Errorf("ParseFileName(%q) succeeded", bad)
		}
	}
	if _, err := ParseFileName("000000010000000000000001", 3<<20); err == nil {
		t.Error("a 3 MB segment size was accepted")
	}
}

func TestParseHistory(t *testing.T) {
	h, err := ParseHistory([]byte("1\t0/3000158\tno recovery target specified\n\n# comment\n3\t0/5000000\tat restore point \"x y\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0] != (HistoryEntry{1, 0x3000158, "no recovery target specified"}) || h[1].TLI != 3 || h[1].Reason != `at restore point "x y"` {
		t.Errorf("got %+v", h)
	}
	for _, bad := range []string{"x\t0/1\n", "1\n", "1\tzz\n", "0\t0/1\n", "2\t0/5\n1\t0/6\n", "1\t0/6\n2\t0/5\n", "-1\t0/1\n"} {
		if _, err := ParseHistory([]byte(bad)); err == nil {
			t.Errorf("ParseHistory(%q) succeeded", bad)
		}
	}
}
