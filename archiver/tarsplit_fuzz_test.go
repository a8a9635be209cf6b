package archiver

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

// FuzzSplitWriter checks the splitWriter on any stream the server could
// send: the parts, without the end-of-archive markers it adds, are the
// stream byte for byte, whatever the sizes of the writes; and when the
// stream is a tar archive, every part is one, and together they hold its
// entries in order.
func FuzzSplitWriter(f *testing.F) {
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatGNU, tar.FormatPAX} {
		f.Add(seedArchive(f, format, false), uint16(0), uint16(7))
		f.Add(seedArchive(f, format, true), uint16(600), uint16(512))
	}
	f.Add(seedArchive(f, tar.FormatUSTAR, false)[:1500], uint16(0), uint16(100))
	f.Add(make([]byte, 1024), uint16(0), uint16(0))
	f.Add([]byte{}, uint16(0), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, limit, chunk uint16) {
		// Backup never makes a splitWriter of limit 0.
		whole, wholeErr := splitAll(data, 1+int64(limit), len(data))
		pieces, piecesErr := splitAll(data, 1+int64(limit), 1+int(chunk))
		if fmt.Sprint(wholeErr) != fmt.Sprint(piecesErr) || !slices.EqualFunc(whole, pieces, bytes.Equal) {
			t.Fatalf("writes of %d bytes and of all at once give other parts (%d, %v; %d, %v)", 1+chunk, len(pieces), piecesErr, len(whole), wholeErr)
		}
		if wholeErr != nil {
			return // the archive is not stored
		}
		var joined []byte
		for i, p := range whole {
			if i < len(whole)-1 {
				if !bytes.HasSuffix(p, tarEndBlocks[:]) || len(p) == len(tarEndBlocks) {
					t.Fatalf("part %d of %d is empty or has no end-of-archive marker", i, len(whole))
				}
				p = p[:len(p)-len(tarEndBlocks)]
			}
			joined = append(joined, p...)
		}
		if !bytes.Equal(joined, data) {
			t.Fatalf("the parts without their added markers are not the stream")
		}
		want, err := tarEntries(data)
		if err != nil {
			return // not a tar archive: the parts need only hold its bytes
		}
		var got []string
		for i, p := range whole {
			e, err := tarEntries(p)
			if err != nil {
				t.Fatalf("part %d of %d of a tar archive is not one: %v", i, len(whole), err)
			}
			got = append(got, e...)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("the parts hold other entries than the archive:\n%q\n%q", got, want)
		}
	})
}

// splitAll splits data with a splitWriter of the given limit, written in
// pieces of n bytes, and returns the parts.
func splitAll(data []byte, limit int64, n int) ([][]byte, error) {
	var p partBuffers
	w := newSplitWriter(limit, p.open)
	for rest := data; len(rest) > 0; {
		k := min(n, len(rest))
		if m, err := w.Write(rest[:k]); err != nil || m != k {
			return nil, fmt.Errorf("Write = %d, %v", m, err)
		}
		rest = rest[k:]
	}
	err := w.CloseWithError(nil)
	out := make([][]byte, len(p.parts))
	for i, b := range p.parts {
		out[i] = b.Bytes()
	}
	return out, err
}

// tarEntries lists the entries of a tar archive as archive/tar reads them.
func tarEntries(archive []byte) ([]string, error) {
	tr := tar.NewReader(bytes.NewReader(archive))
	var out []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("%q %c %q %x", h.Name, h.Typeflag, h.Linkname, data))
	}
}

// seedArchive writes a small archive like BASE_BACKUP's, with long names
// in the formats that have them; with odd, a PAX record, a hard link, a
// file whose data fills its last block, and an old-style directory.
func seedArchive(tb testing.TB, format tar.Format, odd bool) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data string) {
		h.Format, h.Size = format, int64(len(data))
		if h.Mode == 0 {
			h.Mode = 0o600
		}
		if err := tw.WriteHeader(h); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.WriteString(tw, data); err != nil {
			tb.Fatal(err)
		}
	}
	add(&tar.Header{Name: "base/", Typeflag: tar.TypeDir, Mode: 0o700}, "")
	add(&tar.Header{Name: "base/1", Typeflag: tar.TypeReg}, "x")
	add(&tar.Header{Name: "base/2", Typeflag: tar.TypeReg}, strings.Repeat("y", 600))
	if format != tar.FormatUSTAR {
		add(&tar.Header{Name: "base/" + strings.Repeat("long", 30), Typeflag: tar.TypeReg}, "z")
	}
	add(&tar.Header{Name: "pg_wal", Typeflag: tar.TypeSymlink, Linkname: "/elsewhere", Mode: 0o777}, "")
	if odd {
		add(&tar.Header{Name: "base/3", Typeflag: tar.TypeLink, Linkname: "base/1"}, "")
		add(&tar.Header{Name: "base/4", Typeflag: tar.TypeReg}, strings.Repeat("w", 512))
		if format == tar.FormatPAX {
			add(&tar.Header{Name: "base/5", Typeflag: tar.TypeReg, PAXRecords: map[string]string{"comment": "x"}}, "v")
		}
		add(&tar.Header{Name: "old/", Typeflag: tar.TypeRegA}, "") //nolint:staticcheck // as old archives have them
		add(&tar.Header{Name: "base/6", Typeflag: tar.TypeReg}, "u")
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}
