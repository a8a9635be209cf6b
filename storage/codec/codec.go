package codec

import (
	"errors"
	"fmt"
)

// Compression is how an object's payload is compressed. Its values are the
// ones stored in the object header.
type Compression uint8

// The compressions an object can have.
const (
	// None stores the payload as it is.
	None Compression = 0
	// Zstd stores the payload as one zstd frame.
	Zstd Compression = 1
)

// String returns the compression's name as ParseCompression accepts it.
func (c Compression) String() string {
	switch c {
	case None:
		return "none"
	case Zstd:
		return "zstd"
	default:
		return fmt.Sprintf("compression(%d)", uint8(c))
	}
}

// ParseCompression returns the compression named s ("none" or "zstd").
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "none":
		return None, nil
	case "zstd":
		return Zstd, nil
	default:
		return 0, fmt.Errorf("codec: unknown compression %q; use none or zstd", s)
	}
}

// Errors that callers tell apart with errors.Is.
var (
	// ErrCorrupt is wrapped by every error that says an object's stored bytes
	// are wrong: checksum or length mismatch, truncation, trailing data, a bad
	// header, a damaged zstd frame or age stream. It is never wrapped by
	// errors that the underlying reader returned.
	ErrCorrupt = errors.New("corrupt")

	// ErrIdentity is wrapped by the errors that say an encrypted object cannot
	// be decrypted with the identities given: none given, or none of them
	// among the object's recipients. A damaged age header looks the same to
	// age; Verify tells the two apart.
	ErrIdentity = errors.New("no matching age identity")

	// ErrUnsupported is wrapped by the errors that say an object was written
	// by a newer walship: a format version, compression, encryption or
	// reserved header value this version does not know.
	ErrUnsupported = errors.New("written by a newer walship")
)

// Info describes a stored object, as Verify found it.
type Info struct {
	// Compression is the object's compression as its header records it.
	Compression Compression
	// Encrypted says whether the body is an age file.
	Encrypted bool
	// Size is the payload length, uncompressed and decrypted, as the trailer
	// records it.
	Size int64
	// StoredSize is the length of the stored object, header to trailer.
	StoredSize int64
	// Sum is the sha256 of the stored bytes before it: header, body and
	// payload length. It is the last 32 bytes of the object.
	Sum [32]byte
}

// Layout of the stored format; doc.go describes it.
const (
	magic      = "WSO"
	version    = 1
	headerLen  = 8
	lengthLen  = 8
	sumLen     = 32
	trailerLen = lengthLen + sumLen

	encryptionNone = 0
	encryptionAge  = 1
)

// header is an object's parsed header.
type header struct {
	compression Compression
	encrypted   bool
}

// marshal returns the header's stored bytes.
func (h header) marshal() [headerLen]byte {
	var b [headerLen]byte
	copy(b[:], magic)
	b[3] = version
	b[4] = byte(h.compression)
	if h.encrypted {
		b[5] = encryptionAge
	}
	return b
}

// checkVersion checks the magic and the format version, without which
// nothing after the header can be read, not even the trailer.
func checkVersion(b [headerLen]byte, name string) error {
	if string(b[:3]) != magic {
		return fmt.Errorf("codec: object %s: %w: not a walship object (starts with % x, want % x)",
			name, ErrCorrupt, b[:4], append([]byte(magic), version))
	}
	switch {
	case b[3] > version:
		return fmt.Errorf("codec: object %s: %w (format version %d); upgrade walship to read it",
			name, ErrUnsupported, b[3])
	case b[3] < version:
		return fmt.Errorf("codec: object %s: %w: format version %d does not exist", name, ErrCorrupt, b[3])
	}
	return nil
}

// parseHeader returns the header that b records. The error, if any, says
// which value this version does not know; the header returned then still
// holds the values as stored, for Info.
func parseHeader(b [headerLen]byte, name string) (header, error) {
	h := header{compression: Compression(b[4]), encrypted: b[5] != encryptionNone}
	var unknown string
	switch {
	case h.compression != None && h.compression != Zstd:
		unknown = fmt.Sprintf("compression %d", b[4])
	case b[5] != encryptionNone && b[5] != encryptionAge:
		unknown = fmt.Sprintf("encryption %d", b[5])
	case b[6] != 0 || b[7] != 0:
		unknown = fmt.Sprintf("reserved header bytes % x", b[6:8])
	default:
		return h, nil
	}
	return h, fmt.Errorf("codec: object %s: %w (%s); upgrade walship to read it", name, ErrUnsupported, unknown)
}
