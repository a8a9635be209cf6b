package codec

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// maxWindow bounds the zstd window a Reader accepts, and so the memory a
// damaged frame header can make it allocate. Writers use 8 MiB at most.
const maxWindow = 32 << 20

// Reader decodes an object in the stored format, streaming from the
// underlying reader. Its methods are not safe for concurrent use.
type Reader struct {
	name    string
	hdr     header
	body    *holdback
	age     *tracked      // the age plaintext; nil without encryption
	frame   *frameGuard   // the zstd frame; nil without compression
	zr      *zstd.Decoder // nil without compression
	payload io.Reader     // what Read reads from: zr, age or body
	below   []namedReader // the layers under payload, top down, for trailing data
	size    int64         // payload bytes returned
	sum     [sumLen]byte  // set once verified
	err     error         // sticky: io.EOF once verified, or the first error
	closed  bool
}

// namedReader is a decoding layer and the name errors give it.
type namedReader struct {
	name string
	r    io.Reader
}

// NewReader returns a Reader of the payload of the object read from r. name
// is the object's key, which every error names. NewReader reads the header
// and, for an encrypted object, the age header, which one of identities must
// decrypt. Read returns io.EOF only once the whole object has been verified.
// Close releases the decompressor; it does not close r.
func NewReader(r io.Reader, name string, identities []age.Identity) (*Reader, error) {
	body := newHoldback(r)
	hdr, err := readHeader(body, name)
	if err != nil {
		return nil, err
	}
	if err := hdr.fieldsErr; err != nil {
		return nil, err
	}
	cr := &Reader{name: name, hdr: hdr.header, body: body, payload: body}
	if hdr.encrypted {
		if len(identities) == 0 {
			return nil, fmt.Errorf("codec: object %s: %w: it is encrypted with age; "+
				"give the identity it was encrypted to (--age-identity-file)", name, ErrIdentity)
		}
		plain, err := age.Decrypt(body, identities...)
		if err != nil {
			return nil, cr.ageError(err, identities)
		}
		cr.age = &tracked{r: plain}
		cr.below = append([]namedReader{{"age file", body}}, cr.below...)
		cr.payload = cr.age
	}
	if hdr.compression == Zstd {
		cr.frame = &frameGuard{r: cr.payload}
		zr, err := zstd.NewReader(cr.frame,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxWindow))
		if err != nil {
			return nil, fmt.Errorf("codec: object %s: zstd: %w", name, err)
		}
		cr.below = append([]namedReader{{"zstd frame", cr.frame}}, cr.below...)
		cr.zr, cr.payload = zr, zr
	}
	return cr, nil
}

// ageError explains why age.Decrypt failed.
func (r *Reader) ageError(err error, identities []age.Identity) error {
	if failed := r.body.failure(r.name); failed != nil {
		return failed
	}
	var noMatch *age.NoIdentityMatchError
	if errors.As(err, &noMatch) {
		return fmt.Errorf("codec: object %s: %w: %s not among its recipients; "+
			"give the identity it was encrypted to (--age-identity-file), "+
			"or run verify in case the object is damaged: %w",
			r.name, ErrIdentity, describe(identities), err)
	}
	return fmt.Errorf("codec: object %s: %w: age header: %v", r.name, ErrCorrupt, err)
}

// describe names identities by their public keys where age has them.
func describe(identities []age.Identity) string {
	names := make([]string, 0, len(identities))
	for _, id := range identities {
		switch id := id.(type) {
		case *age.X25519Identity:
			names = append(names, id.Recipient().String())
		default:
			names = append(names, fmt.Sprintf("a %T", id))
		}
	}
	if len(names) == 1 {
		return "identity " + names[0] + " is"
	}
	return "identities " + strings.Join(names, ", ") + " are"
}

// Read reads payload bytes. At the end of the object it verifies the
// checksum, the payload length and that no data follows the body, and
// returns io.EOF only if all hold. Errors are sticky.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.payload.Read(p)
	r.size += int64(n)
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		r.err = r.finish()
		return n, r.err
	default:
		r.err = r.failure(err)
		return n, r.err
	}
}

// failure classifies err, returned by a decoding layer: an error of the
// underlying reader, a truncated object, or a damaged body. The decoders'
// own errors are quoted, not wrapped: some wrap io.EOF, which a caller must
// never mistake for the end of the object.
func (r *Reader) failure(err error) error {
	if failed := r.body.failure(r.name); failed != nil {
		return failed
	}
	switch {
	case r.age != nil && r.age.err != nil:
		return fmt.Errorf("codec: object %s: %w: age: %v", r.name, ErrCorrupt, r.age.err)
	case r.frame != nil && r.frame.err != nil:
		return fmt.Errorf("codec: object %s: %w: %v", r.name, ErrCorrupt, r.frame.err)
	case r.zr != nil:
		return fmt.Errorf("codec: object %s: %w: zstd: %v", r.name, ErrCorrupt, err)
	case r.age != nil:
		return fmt.Errorf("codec: object %s: %w: age: %v", r.name, ErrCorrupt, err)
	default:
		return fmt.Errorf("codec: object %s: %w: %v", r.name, ErrCorrupt, err)
	}
}

// finish checks the end of the object once the payload ended: nothing left
// in the layers below, then the trailer. It returns io.EOF if all is well.
func (r *Reader) finish() error {
	var one [1]byte
	for _, l := range r.below {
		n, err := io.ReadFull(l.r, one[:])
		if n > 0 {
			return fmt.Errorf("codec: object %s: %w: data after the %s", r.name, ErrCorrupt, l.name)
		}
		if err != io.EOF {
			return r.failure(err)
		}
	}
	if r.frame != nil && r.frame.step != stepDone {
		return fmt.Errorf("codec: object %s: %w: the body ends before the end of its zstd frame", r.name, ErrCorrupt)
	}
	size, sum, err := r.body.verify(r.name)
	if err != nil {
		return err
	}
	if size != r.size {
		return fmt.Errorf("codec: object %s: %w: payload is %d bytes, trailer records %d",
			r.name, ErrCorrupt, r.size, size)
	}
	r.sum = sum
	return io.EOF
}

// Compression returns the object's compression.
func (r *Reader) Compression() Compression { return r.hdr.compression }

// Encrypted says whether the object is encrypted.
func (r *Reader) Encrypted() bool { return r.hdr.encrypted }

// Sum returns the object's verified sha256, as Writer.Sum did, once Read
// returned io.EOF; zero before.
func (r *Reader) Sum() [32]byte { return r.sum }

// Close releases the decompressor. Later Reads fail; Close does not close
// the underlying reader.
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.zr != nil {
		r.zr.Close()
	}
	if r.err == nil || r.err == io.EOF {
		r.err = fmt.Errorf("codec: object %s: read after close", r.name)
	}
	return nil
}

// Verify reads the object from r and checks its checksum, without
// decrypting or decompressing it, so it needs no identity. name is the
// object's key, which errors name. For an object a newer walship wrote,
// Verify still checks what it can: an intact object gives ErrUnsupported
// with its Info, a damaged one ErrCorrupt.
func Verify(r io.Reader, name string) (Info, error) {
	body := newHoldback(r)
	hdr, err := readHeader(body, name)
	if err != nil {
		return Info{}, err
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		if failed := body.failure(name); failed != nil {
			return Info{}, failed
		}
		return Info{}, fmt.Errorf("codec: object %s: read: %w", name, err)
	}
	size, sum, err := body.verify(name)
	if err != nil {
		return Info{}, err
	}
	info := Info{
		Compression: hdr.compression,
		Encrypted:   hdr.encrypted,
		Size:        size,
		StoredSize:  body.read,
		Sum:         sum,
	}
	return info, hdr.fieldsErr
}

// parsedHeader is a header and what is unknown in it.
type parsedHeader struct {
	header
	fieldsErr error // ErrUnsupported for a value this version does not know
}

// readHeader reads and checks the header from body.
func readHeader(body *holdback, name string) (parsedHeader, error) {
	var b [headerLen]byte
	if _, err := io.ReadFull(body, b[:]); err != nil {
		if failed := body.failure(name); failed != nil {
			return parsedHeader{}, failed
		}
		return parsedHeader{}, fmt.Errorf("codec: object %s: read header: %w", name, err)
	}
	if err := checkVersion(b, name); err != nil {
		return parsedHeader{}, err
	}
	h, err := parseHeader(b, name)
	return parsedHeader{header: h, fieldsErr: err}, nil
}

// tracked remembers the first error, other than io.EOF, of the reader it
// wraps, so that errors can name the layer that failed.
type tracked struct {
	r   io.Reader
	err error
}

// Read reads from the wrapped reader.
func (t *tracked) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}
