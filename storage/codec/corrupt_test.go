package codec

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// decodeErr decodes stored and returns the error, failing the test if there
// is none, or if it is io.EOF or does not name the object.
func decodeErr(t *testing.T, stored []byte, identities []age.Identity) error {
	t.Helper()
	_, err := decode(stored, identities)
	checkNamed(t, "decode", err)
	return err
}

// verifyErr is decodeErr for Verify.
func verifyErr(t *testing.T, stored []byte) error {
	t.Helper()
	_, err := Verify(bytes.NewReader(stored), testName)
	checkNamed(t, "Verify", err)
	return err
}

// checkNamed fails the test unless err is an error naming the object.
func checkNamed(t *testing.T, op string, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("%s succeeded, want an error", op)
	case errors.Is(err, io.EOF):
		t.Fatalf("%s = %v, want an error other than io.EOF", op, err)
	case !strings.Contains(err.Error(), "codec: object "+testName+": "):
		t.Fatalf("%s = %q, want an error naming %s", op, err, testName)
	}
}

// parts splits a stored object into header, body and payload length.
func parts(stored []byte) (hdr [headerLen]byte, body []byte, length uint64) {
	copy(hdr[:], stored)
	body = stored[headerLen : len(stored)-trailerLen]
	length = binary.BigEndian.Uint64(stored[len(stored)-trailerLen:])
	return hdr, body, length
}

// seal builds an object with a correct checksum from its parts, as a writer
// with a bug, or a newer walship, could.
func seal(hdr [headerLen]byte, body []byte, length uint64) []byte {
	b := append(append([]byte{}, hdr[:]...), body...)
	b = binary.BigEndian.AppendUint64(b, length)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// ageHeaderEnd returns the offset just past the age header in an object
// with an encrypted body.
func ageHeaderEnd(t *testing.T, stored []byte) int {
	t.Helper()
	i := bytes.Index(stored, []byte("\n--- "))
	if i < 0 {
		t.Fatal("no age header in the object")
	}
	return i + 1 + bytes.IndexByte(stored[i+1:], '\n') + 1
}

func TestFlippedByte(t *testing.T) {
	payload := mixedBytes(21, 300_000)
	for _, v := range variants(t) {
		stored, _ := encode(t, payload, v.opts)
		n := len(stored)
		ageEnd := 0
		if len(v.opts.Recipients) > 0 {
			ageEnd = ageHeaderEnd(t, stored)
		}
		positions := []int{0, 2, 3, 4, 5, 6, 7, 8, 9, 20, 60, 200, n / 3, n / 2, n - 100, n - 41, n - 40, n - 33, n - 32, n - 1}
		for _, pos := range positions {
			for _, mask := range []byte{0x01, 0x80, 0xff} {
				t.Run(fmt.Sprintf("%s/at%d^%02x", v.name, pos, mask), func(t *testing.T) {
					bad := bytes.Clone(stored)
					bad[pos] ^= mask

					err := decodeErr(t, bad, v.identities)
					switch {
					case errors.Is(err, ErrCorrupt):
					case errors.Is(err, ErrUnsupported) && pos >= 3 && pos < headerLen:
					case errors.Is(err, ErrIdentity) && (pos == 5 || pos >= headerLen && pos < ageEnd):
						// A header saying "encrypted" asks for an identity;
						// age cannot tell a damaged recipient stanza from a
						// wrong identity, and the error says to run verify.
					default:
						t.Fatalf("decode = %v, want ErrCorrupt", err)
					}

					err = verifyErr(t, bad)
					if !errors.Is(err, ErrCorrupt) && !(pos == 3 && errors.Is(err, ErrUnsupported)) {
						t.Fatalf("Verify = %v, want ErrCorrupt", err)
					}
				})
			}
		}
	}
}

func TestTruncated(t *testing.T) {
	for _, v := range variants(t) {
		for _, size := range []int{0, 100_000} {
			stored, _ := encode(t, textBytes(3, size), v.opts)
			n := len(stored)
			for _, cut := range []int{0, 1, 7, 8, 9, 39, 40, 47, 48, 49, 100, 300, n / 2, n - 41, n - 40, n - 39, n - 33, n - 32, n - 1} {
				if cut >= n {
					continue
				}
				t.Run(fmt.Sprintf("%s/%d/cut%d", v.name, size, cut), func(t *testing.T) {
					if err := decodeErr(t, stored[:cut], v.identities); !errors.Is(err, ErrCorrupt) {
						t.Errorf("decode = %v, want ErrCorrupt", err)
					}
					if err := verifyErr(t, stored[:cut]); !errors.Is(err, ErrCorrupt) {
						t.Errorf("Verify = %v, want ErrCorrupt", err)
					}
				})
			}
		}
	}
}

func TestTrailingData(t *testing.T) {
	for _, v := range variants(t) {
		stored, _ := encode(t, textBytes(4, 5000), v.opts)
		for _, extra := range [][]byte{{0}, []byte("garbage"), bytes.Repeat([]byte{0xAB}, 40), randomBytes(5, 1000)} {
			t.Run(fmt.Sprintf("%s/after-trailer/%d", v.name, len(extra)), func(t *testing.T) {
				bad := append(bytes.Clone(stored), extra...)
				if err := decodeErr(t, bad, v.identities); !errors.Is(err, ErrCorrupt) {
					t.Errorf("decode = %v, want ErrCorrupt", err)
				}
				if err := verifyErr(t, bad); !errors.Is(err, ErrCorrupt) {
					t.Errorf("Verify = %v, want ErrCorrupt", err)
				}
			})
		}
	}
}

// TestMalformedBody checks objects whose checksum is right but whose body
// is not what the header says: a writer's bug, not damage in storage. Verify
// passes them, as it only checks the stored bytes; a Reader must not.
func TestMalformedBody(t *testing.T) {
	id := newIdentity(t)
	ids := []age.Identity{id}
	payload := textBytes(6, 20_000)
	zstdFrame := func(p []byte) []byte {
		zw, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		defer zw.Close()
		return zw.EncodeAll(p, nil)
	}
	encrypt := func(p []byte) []byte {
		var buf bytes.Buffer
		ew, err := age.Encrypt(&buf, id.Recipient())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ew.Write(p); err != nil {
			t.Fatal(err)
		}
		if err := ew.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	skippable := []byte{0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	plain := header{compression: None}.marshal()
	zstdHdr := header{compression: Zstd}.marshal()
	ageHdr := header{compression: None, encrypted: true}.marshal()
	both := header{compression: Zstd, encrypted: true}.marshal()
	n := uint64(len(payload))

	cases := []struct {
		name   string
		stored []byte
		want   string
	}{
		{"length too large", seal(plain, payload, n+1), "trailer records"},
		{"length too small", seal(zstdHdr, zstdFrame(payload), n-1), "trailer records"},
		{"zstd then junk", seal(zstdHdr, cat(zstdFrame(payload), []byte("junk")), n), "after the zstd frame"},
		{"zstd then a second frame", seal(zstdHdr, cat(zstdFrame(payload), zstdFrame([]byte("more"))), n+4), "after the zstd frame"},
		{"zstd then a skippable frame", seal(zstdHdr, cat(zstdFrame(payload), skippable), n), "after the zstd frame"},
		{"zstd with no frame", seal(zstdHdr, nil, 0), "zstd"},
		{"skippable frame first", seal(zstdHdr, cat(skippable, zstdFrame(payload)), n), "not a zstd frame"},
		{"not zstd", seal(zstdHdr, payload, n), "not a zstd frame"},
		{"age then junk", seal(ageHdr, cat(encrypt(payload), []byte("junk")), n), "age"},
		{"zstd then junk inside age", seal(both, encrypt(cat(zstdFrame(payload), []byte("junk"))), n), "after the zstd frame"},
		{"age with no file", seal(ageHdr, nil, 0), "age header"},
		{"not age", seal(ageHdr, payload, n), "age header"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeErr(t, tc.stored, ids)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decode = %v, want ErrCorrupt saying %q", err, tc.want)
			}
			if _, err := Verify(bytes.NewReader(tc.stored), testName); err != nil {
				t.Errorf("Verify = %v, want nil: the stored bytes are intact", err)
			}
		})
	}
}

func TestHeader(t *testing.T) {
	body := []byte("payload")
	good := header{}.marshal()
	with := func(i int, b byte) [headerLen]byte {
		h := good
		h[i] = b
		return h
	}
	cases := []struct {
		name        string
		hdr         [headerLen]byte
		want        error
		msg         string
		verifyInfo  bool // Verify reads the whole object and returns its Info
		compression Compression
	}{
		{"bad magic", [headerLen]byte{'P', 'K', 3, 4}, ErrCorrupt, "not a walship object", false, 0},
		{"version 0", with(3, 0), ErrCorrupt, "format version 0", false, 0},
		{"version 2", with(3, 2), ErrUnsupported, "written by a newer walship (format version 2); upgrade", false, 0},
		{"compression 7", with(4, 7), ErrUnsupported, "written by a newer walship (compression 7); upgrade", true, 7},
		{"encryption 2", with(5, 2), ErrUnsupported, "written by a newer walship (encryption 2); upgrade", true, 0},
		{"reserved", with(7, 1), ErrUnsupported, "written by a newer walship (reserved header bytes 00 01); upgrade", true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stored := seal(tc.hdr, body, uint64(len(body)))
			err := decodeErr(t, stored, nil)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("decode = %v, want %v saying %q", err, tc.want, tc.msg)
			}
			info, err := Verify(bytes.NewReader(stored), testName)
			checkNamed(t, "Verify", err)
			if !errors.Is(err, tc.want) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
			var want Info
			if tc.verifyInfo {
				want = Info{
					Compression: tc.compression,
					Encrypted:   tc.hdr[5] != 0,
					Size:        int64(len(body)),
					StoredSize:  int64(len(stored)),
					Sum:         [32]byte(stored[len(stored)-sumLen:]),
				}
			}
			if info != want {
				t.Errorf("Verify info = %+v, want %+v", info, want)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	right, wrong := newIdentity(t), newIdentity(t)
	payload := textBytes(8, 10_000)
	for _, c := range []Compression{None, Zstd} {
		stored, _ := encode(t, payload, Options{Compression: c, Recipients: []age.Recipient{right.Recipient()}})
		t.Run(c.String()+"/missing", func(t *testing.T) {
			err := decodeErr(t, stored, nil)
			if !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), "--age-identity") {
				t.Errorf("decode = %v, want ErrIdentity saying to give --age-identity", err)
			}
		})
		t.Run(c.String()+"/wrong", func(t *testing.T) {
			err := decodeErr(t, stored, []age.Identity{wrong})
			if !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), wrong.Recipient().String()) {
				t.Errorf("decode = %v, want ErrIdentity naming the identity tried", err)
			}
			if errors.Is(err, ErrCorrupt) {
				t.Errorf("decode = %v, want no ErrCorrupt for a wrong identity", err)
			}
		})
		t.Run(c.String()+"/one of several", func(t *testing.T) {
			got, err := decode(stored, []age.Identity{wrong, right})
			if err != nil || !bytes.Equal(got, payload) {
				t.Errorf("decode = %d bytes, %v; want the payload", len(got), err)
			}
		})
		t.Run(c.String()+"/verify without identity", func(t *testing.T) {
			info, err := Verify(bytes.NewReader(stored), testName)
			if err != nil || !info.Encrypted || info.Size != int64(len(payload)) {
				t.Errorf("Verify = %+v, %v; want an encrypted object of %d bytes", info, err, len(payload))
			}
		})
	}
	t.Run("plain object read with an identity", func(t *testing.T) {
		stored, _ := encode(t, payload, Options{Compression: Zstd})
		got, err := decode(stored, []age.Identity{right})
		if err != nil || !bytes.Equal(got, payload) {
			t.Errorf("decode = %d bytes, %v; want the payload", len(got), err)
		}
	})
}

// brokenReader returns the first n bytes of b, then err.
type brokenReader struct {
	b   []byte
	n   int
	err error
}

func (r *brokenReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := copy(p, r.b[:min(r.n, len(r.b))])
	r.b, r.n = r.b[k:], r.n-k
	return k, nil
}

// TestReadError checks that an error of the underlying reader is reported
// as itself, not as corruption.
func TestReadError(t *testing.T) {
	errNetwork := errors.New("connection reset")
	for _, v := range variants(t) {
		stored, _ := encode(t, mixedBytes(9, 500_000), v.opts)
		for _, at := range []int{0, 5, 30, 100, 70_000, len(stored) / 2, len(stored) - 40, len(stored) - 1} {
			t.Run(fmt.Sprintf("%s/at%d", v.name, at), func(t *testing.T) {
				r := &brokenReader{b: stored, n: at, err: errNetwork}
				var err error
				if cr, nerr := NewReader(r, testName, v.identities); nerr != nil {
					err = nerr
				} else {
					_, err = io.Copy(io.Discard, cr)
					cr.Close()
				}
				checkNamed(t, "decode", err)
				if !errors.Is(err, errNetwork) || errors.Is(err, ErrCorrupt) {
					t.Errorf("decode = %v, want the reader's error and not ErrCorrupt", err)
				}

				_, err = Verify(&brokenReader{b: stored, n: at, err: errNetwork}, testName)
				checkNamed(t, "Verify", err)
				if !errors.Is(err, errNetwork) || errors.Is(err, ErrCorrupt) {
					t.Errorf("Verify = %v, want the reader's error and not ErrCorrupt", err)
				}
			})
		}
	}
}
