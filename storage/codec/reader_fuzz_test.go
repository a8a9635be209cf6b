package codec

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/cryptotest"
	"testing/iotest"

	"filippo.io/age"
)

// fuzzIdentity is the identity FuzzNewReader encrypts to and decrypts with.
// The encryption's randomness is seeded too, so that a crasher found with an
// encrypted object reproduces.
const fuzzIdentity = "AGE-SECRET-KEY-1QNFFF09Z3P3C83USWTDGSTL5KHJ6SNP9GF2AGZ26V37046S309NSYGRMW4"

// How FuzzNewReader changes an object the Writer made.
const (
	mutateNone     = iota
	mutateFlip     // xor the byte at pos with arg[0], or with 1
	mutateTruncate // cut at pos
	mutateAppend   // append arg
	mutateInsert   // insert arg at pos
	mutateReplace  // overwrite from pos with arg
	mutations
)

// maxFuzzPayload bounds what FuzzNewReader reads of one object: a small
// damaged zstd frame can stand for gigabytes, which the Reader streams.
const maxFuzzPayload = 4 << 20

// errFuzzRead is the error of the underlying reader that fails early.
var errFuzzRead = errors.New("fuzz: connection reset")

// FuzzNewReader reads arbitrary bytes (raw) or an object the Writer made of
// data and then mutated, through NewReader and Verify. Neither may panic or
// give an error that does not name the object; an object that decodes has a
// known header and a trailer that verifies; and an object the Writer made
// decodes to its payload unchanged, and to nothing at all once changed.
func FuzzNewReader(f *testing.F) {
	f.Add([]byte{}, true, uint8(0), uint8(0), uint32(0), []byte{}, uint8(0))
	f.Add([]byte("WSO\x01\x00\x00\x00\x00"), true, uint8(0), uint8(0), uint32(0), []byte{}, uint8(0))
	plain, _ := encode(f, []byte("hello"), Options{})
	f.Add(plain, true, uint8(0), uint8(0), uint32(0), []byte{}, uint8(4))
	compressed, _ := encode(f, textBytes(1, 300), Options{Compression: Zstd})
	f.Add(compressed, true, uint8(0), uint8(0), uint32(0), []byte{}, uint8(1))
	for variant := range uint8(4) {
		f.Add([]byte{}, false, variant, uint8(mutateNone), uint32(0), []byte{}, uint8(0))
		f.Add(textBytes(2, 1000), false, variant, uint8(mutateNone), uint32(0), []byte{}, uint8(9))
		f.Add([]byte("payload"), false, variant, uint8(mutateFlip), uint32(12), []byte{0x80}, uint8(2))
		f.Add([]byte("payload"), false, variant, uint8(mutateTruncate), uint32(50), []byte{}, uint8(0))
		f.Add([]byte("payload"), false, variant, uint8(mutateAppend), uint32(0), []byte{0}, uint8(5))
		f.Add(randomBytes(3, 200), false, variant, uint8(mutateInsert), uint32(9), []byte("\x28\xb5\x2f\xfd"), uint8(7))
		f.Add(randomBytes(4, 100), false, variant, uint8(mutateReplace), uint32(4), []byte{1, 1, 0, 0}, uint8(3))
	}
	id, err := age.ParseX25519Identity(fuzzIdentity)
	if err != nil {
		f.Fatal(err)
	}
	identities := []age.Identity{id}
	f.Fuzz(func(t *testing.T, data []byte, raw bool, variant, op uint8, pos uint32, arg []byte, shape uint8) {
		stored := data
		var original, payload []byte
		if !raw {
			opts := Options{Compression: Compression(variant & 1)}
			if variant&2 != 0 {
				opts.Recipients = []age.Recipient{id.Recipient()}
				cryptotest.SetGlobalRandom(t, uint64(variant))
			}
			payload = data
			original, _ = encode(t, payload, opts)
			stored = mutate(original, op, pos, arg)
		}
		changed := !raw && !bytes.Equal(stored, original)

		res := fuzzDecode(t, stored, identities, shape)
		info, verr := Verify(bytes.NewReader(stored), testName)
		if verr != nil {
			fuzzNamed(t, "Verify", verr)
		}

		if changed && verr == nil {
			t.Fatalf("Verify passed a changed object")
		}
		if !raw && !changed && verr != nil {
			t.Fatalf("Verify of an object the Writer made = %v", verr)
		}
		switch {
		case res.failAt >= 0:
			if res.err == nil {
				t.Fatalf("decode succeeded though the reader failed after %d of %d bytes", res.failAt, len(stored))
			}
			if !raw && !changed && (!errors.Is(res.err, errFuzzRead) || errors.Is(res.err, ErrCorrupt)) {
				t.Fatalf("decode = %v, want the reader's error and not ErrCorrupt", res.err)
			}
		case changed && res.err == nil:
			t.Fatalf("a changed object decoded")
		case !raw && !changed:
			if res.err != nil {
				t.Fatalf("decode of an object the Writer made = %v", res.err)
			}
			if res.sum != sha256.Sum256(payload) || res.size != int64(len(payload)) {
				t.Fatalf("decoded %d bytes, not the %d of the payload", res.size, len(payload))
			}
		}
		if res.err == nil && !res.capped {
			checkObject(t, stored, res.size)
			if verr != nil {
				t.Fatalf("decode succeeded, Verify = %v", verr)
			}
			if res.objSum != info.Sum || info.Size != res.size {
				t.Fatalf("Verify = %+v, want size %d and Reader's sum %x", info, res.size, res.objSum)
			}
		}
		// Verify reads the trailer of any object whose format version it knows.
		if verr == nil || errors.Is(verr, ErrUnsupported) && stored[3] == version {
			if verr == nil {
				checkObject(t, stored, info.Size)
			}
			if info.StoredSize != int64(len(stored)) || info.Sum != sha256.Sum256(stored[:len(stored)-sumLen]) {
				t.Fatalf("Verify = %+v, %v for a stored object of %d bytes", info, verr, len(stored))
			}
		}
	})
}

// mutate returns a copy of b changed by op at pos with arg.
func mutate(b []byte, op uint8, pos uint32, arg []byte) []byte {
	at := int(pos % uint32(len(b)+1))
	out := bytes.Clone(b)
	switch op % mutations {
	case mutateFlip:
		if at == len(out) {
			break
		}
		x := byte(1)
		if len(arg) > 0 && arg[0] != 0 {
			x = arg[0]
		}
		out[at] ^= x
	case mutateTruncate:
		out = out[:at]
	case mutateAppend:
		out = append(out, arg...)
	case mutateInsert:
		out = append(out[:at], append(bytes.Clone(arg), b[at:]...)...)
	case mutateReplace:
		out = append(out[:at], arg...)
		if at+len(arg) < len(b) {
			out = append(out, b[at+len(arg):]...)
		}
	}
	return out
}

// fuzzResult is what reading one object gave.
type fuzzResult struct {
	err    error    // nil once Read returned io.EOF
	size   int64    // payload bytes read
	sum    [32]byte // their sha256
	objSum [32]byte // Reader.Sum
	capped bool     // reading stopped at maxFuzzPayload
	failAt int      // where the underlying reader failed; -1 if it did not
}

// fuzzDecode reads stored through a Reader whose underlying reader and read
// sizes shape chooses, checking the errors on the way.
func fuzzDecode(t *testing.T, stored []byte, identities []age.Identity, shape uint8) fuzzResult {
	res := fuzzResult{failAt: -1}
	var src io.Reader = bytes.NewReader(stored)
	switch shape % 4 {
	case 1:
		src = iotest.OneByteReader(src)
	case 2:
		src = &stutterReader{r: iotest.HalfReader(src)}
	case 3:
		res.failAt = len(stored) * int(shape>>2) / 64
		src = &brokenReader{b: stored, n: res.failAt, err: errFuzzRead}
	}
	r, err := NewReader(src, testName, identities)
	if err != nil {
		fuzzNamed(t, "NewReader", err)
		res.err = err
		return res
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for i := 1; ; i++ {
		n, err := r.Read(buf[:1+i*(2*int(shape)+1)*131%len(buf)])
		if n < 0 || n > len(buf) {
			t.Fatalf("Read = %d", n)
		}
		h.Write(buf[:n])
		res.size += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			fuzzNamed(t, "Read", err)
			res.err = err
			break
		}
		if res.size > maxFuzzPayload {
			res.capped = true
			break
		}
	}
	h.Sum(res.sum[:0])
	if res.err == nil && !res.capped {
		res.objSum = r.Sum()
		if n, err := r.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("Read after io.EOF = %d, %v; want 0, io.EOF", n, err)
		}
		if got, want := r.Compression(), Compression(stored[4]); got != want {
			t.Fatalf("Compression() = %v, header records %v", got, want)
		}
		if got, want := r.Encrypted(), stored[5] == encryptionAge; got != want {
			t.Fatalf("Encrypted() = %v, header records %v", got, want)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if _, err := r.Read(buf); err == nil || err == io.EOF {
		t.Fatalf("Read after Close = %v, want an error", err)
	} else {
		fuzzNamed(t, "Read after Close", err)
	}
	return res
}

// fuzzNamed fails the test unless err names the object and is not io.EOF.
func fuzzNamed(t *testing.T, op string, err error) {
	t.Helper()
	if errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "codec: object "+testName+": ") {
		t.Fatalf("%s = %q, want an error naming %s and not io.EOF", op, err, testName)
	}
}

// checkObject fails the test unless stored is an object of the format with
// a known header and a payload of size bytes, checked without the codec.
func checkObject(t *testing.T, stored []byte, size int64) {
	t.Helper()
	if len(stored) < minObject {
		t.Fatalf("accepted an object of %d bytes", len(stored))
	}
	if h := stored[:headerLen]; string(h[:4]) != magic+"\x01" || h[4] > 1 || h[5] > 1 || h[6] != 0 || h[7] != 0 {
		t.Fatalf("accepted an object with header % x", h)
	}
	end := len(stored) - sumLen
	if sum := sha256.Sum256(stored[:end]); !bytes.Equal(sum[:], stored[end:]) {
		t.Fatalf("accepted an object whose checksum does not match")
	}
	if n := binary.BigEndian.Uint64(stored[end-lengthLen : end]); n != uint64(size) {
		t.Fatalf("accepted an object of %d payload bytes whose trailer records %d", size, n)
	}
}

// stutterReader returns nothing, without an error, on every other Read.
type stutterReader struct {
	r    io.Reader
	skip bool
}

func (s *stutterReader) Read(p []byte) (int, error) {
	s.skip = !s.skip
	if s.skip {
		return 0, nil
	}
	return s.r.Read(p)
}
