package codec

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"filippo.io/age"
)

// testName is the object key the tests give readers; errors must name it.
const testName = "wal/1/000000010000000000000007"

// newIdentity returns a fresh age identity.
func newIdentity(t testing.TB) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// variant is one combination of compression and encryption.
type variant struct {
	name       string
	opts       Options
	identities []age.Identity // what reads it back
}

// variants returns every combination of compression and encryption.
func variants(t testing.TB) []variant {
	id := newIdentity(t)
	enc := []age.Recipient{id.Recipient()}
	ids := []age.Identity{id}
	return []variant{
		{"none", Options{Compression: None}, nil},
		{"zstd", Options{Compression: Zstd}, nil},
		{"age", Options{Compression: None, Recipients: enc}, ids},
		{"zstd+age", Options{Compression: Zstd, Recipients: enc}, ids},
	}
}

// encode writes payload through a Writer and returns the stored bytes.
func encode(t testing.TB, payload []byte, opts Options) ([]byte, *Writer) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	// Several writes of odd sizes, as a stream would bring them.
	for rest := payload; len(rest) > 0; {
		n := min(len(rest), 1+len(rest)/3)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes(), w
}

// decode reads stored back through a Reader.
func decode(stored []byte, identities []age.Identity) ([]byte, error) {
	r, err := NewReader(bytes.NewReader(stored), testName, identities)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// randomBytes returns n incompressible bytes, the same for the same seed.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = rng.Read(b)
	return b
}

// textBytes returns n compressible, log-like bytes, the same for the same
// seed.
func textBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	words := make([]string, 300)
	for i := range words {
		w := make([]byte, 2+rng.IntN(9))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(w)
	}
	var b bytes.Buffer
	b.Grow(n + 200)
	for line := 0; b.Len() < n; line++ {
		fmt.Fprintf(&b, "2026-01-%02d 12:%02d:%02d.%03d UTC [%d] ", 1+line/86400%28, line/60%60, line%60, rng.IntN(1000), 1000+rng.IntN(50))
		for range 4 + rng.IntN(10) {
			b.WriteString(words[int(rng.ExpFloat64()*40)%len(words)])
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "id=%d\n", rng.IntN(1_000_000))
	}
	return b.Bytes()[:n]
}

// mixedBytes returns n bytes alternating 64 KiB of text and of random bytes:
// half compressible, half not, like a database's files.
func mixedBytes(seed uint64, n int) []byte {
	b := make([]byte, 0, n)
	for i := 0; len(b) < n; i++ {
		k := min(64<<10, n-len(b))
		if i%2 == 0 {
			b = append(b, textBytes(seed+uint64(i), k)...)
		} else {
			b = append(b, randomBytes(seed+uint64(i), k)...)
		}
	}
	return b
}

// payloads returns the payloads round trips are tried with.
func payloads() []struct {
	name string
	data []byte
} {
	return []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"1", []byte{0x42}},
		{"40", randomBytes(1, 40)},
		{"41", randomBytes(2, 41)},
		{"64KiB", textBytes(3, 64<<10)},
		{"3MiB-random", randomBytes(4, 3<<20)},
		{"3MiB-text", textBytes(5, 3<<20+17)},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, v := range variants(t) {
		for _, p := range payloads() {
			t.Run(v.name+"/"+p.name, func(t *testing.T) {
				stored, w := encode(t, p.data, v.opts)

				got, err := decode(stored, v.identities)
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if !bytes.Equal(got, p.data) {
					t.Fatalf("decoded %d bytes, want the %d written", len(got), len(p.data))
				}

				wantSum := sha256.Sum256(stored[:len(stored)-sumLen])
				if got := w.Sum(); got != wantSum {
					t.Errorf("Sum() = %x, want sha256 of the stored bytes before it %x", got, wantSum)
				}
				if got := stored[len(stored)-sumLen:]; !bytes.Equal(got, wantSum[:]) {
					t.Errorf("trailer sum = %x, want %x", got, wantSum)
				}
				if got, want := w.Size(), int64(len(p.data)); got != want {
					t.Errorf("Size() = %d, want %d", got, want)
				}
				if got, want := w.StoredSize(), int64(len(stored)); got != want {
					t.Errorf("StoredSize() = %d, want %d", got, want)
				}

				info, err := Verify(bytes.NewReader(stored), testName)
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				want := Info{
					Compression: v.opts.Compression,
					Encrypted:   len(v.opts.Recipients) > 0,
					Size:        int64(len(p.data)),
					StoredSize:  int64(len(stored)),
					Sum:         wantSum,
				}
				if info != want {
					t.Errorf("Verify = %+v, want %+v", info, want)
				}
			})
		}
	}
}

func TestReaderState(t *testing.T) {
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			payload := textBytes(9, 100_000)
			stored, w := encode(t, payload, v.opts)
			r, err := NewReader(bytes.NewReader(stored), testName, v.identities)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Compression(); got != v.opts.Compression {
				t.Errorf("Compression() = %v, want %v", got, v.opts.Compression)
			}
			if got, want := r.Encrypted(), len(v.opts.Recipients) > 0; got != want {
				t.Errorf("Encrypted() = %v, want %v", got, want)
			}
			if got := r.Sum(); got != ([32]byte{}) {
				t.Errorf("Sum() before EOF = %x, want zero", got)
			}
			// Read in small pieces, to cross every buffer boundary.
			var got bytes.Buffer
			if _, err := io.CopyBuffer(&got, onlyReader{r}, make([]byte, 333)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), payload) {
				t.Fatal("payload differs")
			}
			if got := r.Sum(); got != w.Sum() {
				t.Errorf("Sum() = %x, want the writer's %x", got, w.Sum())
			}
			if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Errorf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if _, err := r.Read(make([]byte, 10)); err == nil || err == io.EOF || !strings.Contains(err.Error(), testName) {
				t.Errorf("Read after Close = %v, want an error naming %s", err, testName)
			}
			if err := r.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

// TestUnderlyingReaders reads objects through readers that return little at
// a time or data with io.EOF, and checks the Reader's contract with
// iotest.TestReader.
func TestUnderlyingReaders(t *testing.T) {
	payload := mixedBytes(17, 200_000)
	wraps := map[string]func(io.Reader) io.Reader{
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+EOF": iotest.DataErrReader,
	}
	for _, v := range variants(t) {
		stored, _ := encode(t, payload, v.opts)
		for name, wrap := range wraps {
			t.Run(v.name+"/"+name, func(t *testing.T) {
				r, err := NewReader(wrap(bytes.NewReader(stored)), testName, v.identities)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				if err := iotest.TestReader(r, payload); err != nil {
					t.Fatal(err)
				}
			})
		}
		t.Run(v.name+"/verify one byte", func(t *testing.T) {
			if _, err := Verify(iotest.OneByteReader(bytes.NewReader(stored)), testName); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// onlyReader hides every method but Read.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestWriterOptions(t *testing.T) {
	bad := []struct {
		name string
		opts Options
	}{
		{"unknown compression", Options{Compression: 9}},
		{"negative level", Options{Compression: Zstd, Level: -1}},
		{"level 23", Options{Compression: Zstd, Level: 23}},
		{"negative concurrency", Options{Compression: Zstd, Concurrency: -2}},
		{"nil recipient", Options{Recipients: []age.Recipient{nil}}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if _, err := NewWriter(&buf, tc.opts); err == nil {
				t.Fatal("NewWriter succeeded, want an error")
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes for bad options, want none", buf.Len())
			}
		})
	}

	payload := mixedBytes(11, 3<<20)
	for _, opts := range []Options{
		{Compression: Zstd, Level: 3},
		{Compression: Zstd, Level: 19},
		{Compression: Zstd, Concurrency: 2},
		{Compression: Zstd, Concurrency: 3, Level: 7, Recipients: []age.Recipient{newIdentity(t).Recipient()}},
	} {
		t.Run(fmt.Sprintf("level%d-concurrency%d", opts.Level, opts.Concurrency), func(t *testing.T) {
			var ids []age.Identity
			if len(opts.Recipients) > 0 {
				id := newIdentity(t)
				opts.Recipients = append(opts.Recipients, id.Recipient())
				ids = []age.Identity{id}
			}
			stored, _ := encode(t, payload, opts)
			got, err := decode(stored, ids)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("payload differs")
			}
		})
	}
}

func TestParseCompression(t *testing.T) {
	for _, c := range []Compression{None, Zstd} {
		got, err := ParseCompression(c.String())
		if err != nil || got != c {
			t.Errorf("ParseCompression(%q) = %v, %v; want %v", c.String(), got, err, c)
		}
	}
	if _, err := ParseCompression("gzip"); err == nil {
		t.Error("ParseCompression(gzip) succeeded, want an error")
	}
	if got, want := Compression(7).String(), "compression(7)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// failingWriter accepts limit bytes, then fails; it records Close.
type failingWriter struct {
	limit  int
	n      int
	closed bool
}

var errDisk = errors.New("disk full")

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n+len(p) > f.limit {
		k := f.limit - f.n
		f.n = f.limit
		return k, errDisk
	}
	f.n += len(p)
	return len(p), nil
}

func (f *failingWriter) Close() error { f.closed = true; return nil }

func TestWriterStickyError(t *testing.T) {
	for _, v := range variants(t) {
		for _, concurrency := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s/concurrency%d", v.name, concurrency), func(t *testing.T) {
				opts := v.opts
				opts.Concurrency = concurrency
				fw := &failingWriter{limit: 100_000}
				w, err := NewWriter(fw, opts)
				if err != nil {
					t.Fatal(err)
				}
				// Random chunks, all different: they do not compress.
				var werr error
				for i := 0; i < 200 && werr == nil; i++ {
					_, werr = w.Write(randomBytes(uint64(i), 64<<10))
				}
				cerr := w.Close()
				err = werr
				if err == nil {
					err = cerr // compression may hold the failure until Close
				}
				if !errors.Is(err, errDisk) {
					t.Fatalf("error = %v, want one wrapping %v", err, errDisk)
				}
				if !errors.Is(cerr, errDisk) {
					t.Errorf("Close = %v, want the sticky error", cerr)
				}
				if _, err := w.Write([]byte("x")); err == nil {
					t.Error("Write after Close succeeded")
				}
				if fw.closed {
					t.Error("Close closed the underlying writer")
				}
				if got := w.Sum(); got != ([32]byte{}) {
					t.Errorf("Sum() after a failure = %x, want zero", got)
				}
			})
		}
	}
}

func TestWriterCloseTwice(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Options{Compression: Zstd})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	n := buf.Len()
	if err := w.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if _, err := w.Write([]byte("more")); err == nil {
		t.Error("Write after Close succeeded")
	}
	if buf.Len() != n {
		t.Errorf("stored %d bytes after Close, want %d", buf.Len(), n)
	}
}
