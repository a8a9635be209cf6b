package archiver

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// partBuffers collects the parts a splitWriter writes.
type partBuffers struct {
	parts  []*bytes.Buffer
	closed []bool
	fail   error // returned by the close of part 1
}

type partBuffer struct {
	p *partBuffers
	i int
}

func (b partBuffer) Write(p []byte) (int, error) { return b.p.parts[b.i].Write(p) }
func (b partBuffer) CloseWithError(err error) error {
	b.p.closed[b.i] = true
	if b.i == 1 && b.p.fail != nil {
		return b.p.fail
	}
	return err
}

func (p *partBuffers) open(i int) BackupWriter {
	if i != len(p.parts) {
		panic(fmt.Sprintf("opened part %d after %d", i, len(p.parts)))
	}
	p.parts = append(p.parts, new(bytes.Buffer))
	p.closed = append(p.closed, false)
	return partBuffer{p, i}
}

// testArchive writes a tar archive like BASE_BACKUP's: directories, files of
// sizes around the block size, a symlink; with format GNU, long names.
func testArchive(t *testing.T, format tar.Format, files int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	rng := rand.New(rand.NewPCG(1, 2))
	add := func(h *tar.Header, data []byte) {
		h.Format = format
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: "base/", Typeflag: tar.TypeDir, Mode: 0o700}, nil)
	for i := range files {
		size := []int{0, 1, 511, 512, 513, 8192, 20000}[i%7] + rng.IntN(3)
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("base/%d", i)
		if format == tar.FormatGNU && i%5 == 0 {
			name = "base/" + strings.Repeat("long", 40) + fmt.Sprint(i)
		}
		add(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(size)}, data)
	}
	add(&tar.Header{Name: "pg_wal", Typeflag: tar.TypeSymlink, Linkname: "/elsewhere", Mode: 0o777}, nil)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// entries lists the names and contents of a tar archive, which must end
// with its end-of-archive marker.
func entries(t *testing.T, archive []byte) []string {
	t.Helper()
	if !bytes.HasSuffix(archive, tarEndBlocks[:]) {
		t.Fatalf("archive of %d bytes does not end with the end-of-archive marker", len(archive))
	}
	tr := tar.NewReader(bytes.NewReader(archive))
	var out []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %c %x", h.Name, h.Typeflag, data))
	}
}

// TestSplitWriter checks that the parts are whole tar archives, cut only at
// entries, that together hold the archive's entries in order, whatever the
// sizes of the writes.
func TestSplitWriter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		format tar.Format
		limit  int64
	}{
		{"ustar small parts", tar.FormatUSTAR, 1},
		{"ustar", tar.FormatUSTAR, 40 << 10},
		{"gnu long names", tar.FormatGNU, 10 << 10},
		{"one part", tar.FormatUSTAR, 1 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			archive := testArchive(t, tc.format, 60)
			want := entries(t, archive)
			for _, chunk := range []int{1, 7, 512, 1000, 1 << 20} {
				var p partBuffers
				w := newSplitWriter(tc.limit, p.open)
				for rest := archive; len(rest) > 0; {
					n := min(chunk, len(rest))
					if m, err := w.Write(rest[:n]); err != nil || m != n {
						t.Fatalf("Write = %d, %v", m, err)
					}
					rest = rest[n:]
				}
				if err := w.CloseWithError(nil); err != nil {
					t.Fatal(err)
				}
				var got []string
				for i, part := range p.parts {
					if !p.closed[i] {
						t.Fatalf("part %d not closed", i)
					}
					e := entries(t, part.Bytes())
					if len(e) == 0 {
						t.Fatalf("part %d is empty", i)
					}
					got = append(got, e...)
				}
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Fatalf("writes of %d: the parts hold other entries than the archive", chunk)
				}
				switch {
				case tc.limit == 1 && len(p.parts) < 30, tc.limit == 1<<30 && len(p.parts) != 1:
					t.Fatalf("limit %d: %d parts", tc.limit, len(p.parts))
				case tc.limit == 1<<30 && !bytes.Equal(p.parts[0].Bytes(), archive):
					t.Fatal("one part is not the archive byte for byte")
				}
			}
		})
	}
}

// TestSplitWriterStops checks that cutting stops, safely, at headers it
// cannot vouch for: a PAX header (which may change the next entry's size)
// and a damaged header; what follows goes into the part it is in.
func TestSplitWriterStops(t *testing.T) {
	t.Run("pax", func(t *testing.T) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for i := range 10 {
			h := &tar.Header{Name: fmt.Sprint(i), Mode: 0o600, Size: 3000, Typeflag: tar.TypeReg}
			if i == 4 {
				h.PAXRecords = map[string]string{"comment": "x"}
			}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			tw.Write(make([]byte, 3000))
		}
		tw.Close()
		var p partBuffers
		w := newSplitWriter(1, p.open)
		w.Write(buf.Bytes())
		if err := w.CloseWithError(nil); err != nil {
			t.Fatal(err)
		}
		if len(p.parts) != 5 { // 0, 1, 2, 3, then 4 (with its PAX header) to the end
			t.Fatalf("%d parts, want 5", len(p.parts))
		}
		if n := len(entries(t, p.parts[4].Bytes())); n != 6 {
			t.Fatalf("last part has %d entries, want 6", n)
		}
	})
	t.Run("damaged header", func(t *testing.T) {
		archive := testArchive(t, tar.FormatUSTAR, 20)
		archive[bytes.Index(archive, []byte("base/5\x00"))] ^= 0xff
		var p partBuffers
		w := newSplitWriter(1, p.open)
		w.Write(archive)
		if err := w.CloseWithError(nil); err != nil {
			t.Fatal(err)
		}
		var joined []byte
		for i, part := range p.parts {
			b := part.Bytes()
			if i < len(p.parts)-1 {
				b = bytes.TrimSuffix(b, tarEndBlocks[:])
			}
			joined = append(joined, b...)
		}
		if !bytes.Equal(joined, archive) {
			t.Fatal("the parts without their added markers are not the archive")
		}
		if len(p.parts) != 6 { // one per entry up to base/4, which the damaged header follows
			t.Fatalf("%d parts, want 6", len(p.parts))
		}
	})
}

// TestSplitWriterErrors checks that a failed part's store fails the
// archive and that an error given to CloseWithError wins.
func TestSplitWriterErrors(t *testing.T) {
	archive := testArchive(t, tar.FormatUSTAR, 20)
	boom := errors.New("boom")
	p := partBuffers{fail: boom}
	w := newSplitWriter(1, p.open)
	if _, err := w.Write(archive); !errors.Is(err, boom) {
		t.Fatalf("Write = %v, want part 1's failure", err)
	}
	if err := w.CloseWithError(nil); !errors.Is(err, boom) {
		t.Fatalf("CloseWithError = %v, want part 1's failure", err)
	}
	stop := errors.New("stream broke")
	var q partBuffers
	w = newSplitWriter(1, q.open)
	w.Write(archive[:5000])
	if err := w.CloseWithError(stop); !errors.Is(err, stop) {
		t.Fatalf("CloseWithError = %v, want the stream's error", err)
	}
}

// TestSplitWriterIncomplete checks that an archive cut short (between
// entries, in a header, in data) fails instead of being stored, and that
// an archive never has more than maxParts parts.
func TestSplitWriterIncomplete(t *testing.T) {
	archive := testArchive(t, tar.FormatUSTAR, 20)
	end := len(archive) - len(tarEndBlocks)
	for _, n := range []int{0, 512, 700, end - 512, end} {
		var p partBuffers
		w := newSplitWriter(1, p.open)
		w.Write(archive[:n])
		if err := w.CloseWithError(nil); err == nil || !strings.Contains(err.Error(), "end-of-archive marker") {
			t.Errorf("archive cut at %d of %d: CloseWithError = %v", n, len(archive), err)
		}
	}
	var p partBuffers
	w := newSplitWriter(1, p.open)
	big := testArchive(t, tar.FormatUSTAR, maxParts+50)
	w.Write(big)
	if err := w.CloseWithError(nil); err != nil {
		t.Fatal(err)
	}
	if len(p.parts) != maxParts {
		t.Errorf("%d parts, want at most %d", len(p.parts), maxParts)
	}
}
