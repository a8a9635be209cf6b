package codec

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"math"
)

// holdbackSize is the holdback's buffer: what it reads from the underlying
// reader at a time.
const holdbackSize = 64 << 10

// minObject is the length of the smallest object: a header, an empty body
// and a trailer.
const minObject = headerLen + trailerLen

// holdback reads an object's stored bytes but the last trailerLen, which it
// keeps back as the trailer, and hashes the bytes it returns. Its memory is
// its buffer, whatever the object's length.
type holdback struct {
	src        io.Reader
	hash       hash.Hash
	buf        []byte
	start, end int   // buf[start:end] is read from src and not yet returned
	read       int64 // bytes read from src
	eof        bool  // src returned io.EOF
	err        error // src returned another error
}

// newHoldback returns a holdback reading from src.
func newHoldback(src io.Reader) *holdback {
	return &holdback{src: src, hash: sha256.New(), buf: make([]byte, holdbackSize)}
}

// Read returns stored bytes, keeping back the last trailerLen. At the end of
// the stream it returns io.EOF, or the underlying reader's error, or, when
// the stream is too short for a trailer, io.ErrUnexpectedEOF.
func (h *holdback) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for empty := 0; h.end-h.start <= trailerLen && !h.eof && h.err == nil; {
		n := h.fill()
		if n > 0 {
			empty = 0
		} else if empty++; empty >= 100 {
			h.err = io.ErrNoProgress
		}
	}
	avail := h.end - h.start - trailerLen
	if avail <= 0 {
		switch {
		case h.err != nil:
			return 0, h.err
		case avail < 0:
			return 0, io.ErrUnexpectedEOF
		default:
			return 0, io.EOF
		}
	}
	n := copy(p, h.buf[h.start:h.start+avail])
	h.hash.Write(p[:n])
	h.start += n
	return n, nil
}

// fill reads once from src into the buffer, moving what it holds to the
// front when the buffer's end is reached.
func (h *holdback) fill() int {
	if h.end == len(h.buf) {
		h.end = copy(h.buf, h.buf[h.start:h.end])
		h.start = 0
	}
	n, err := h.src.Read(h.buf[h.end:])
	h.end += n
	h.read += int64(n)
	switch {
	case err == io.EOF:
		h.eof = true
	case err != nil:
		h.err = err
	}
	return n
}

// failure returns the error that explains why reading stopped early, if the
// holdback knows it: the underlying reader failed, or the object is shorter
// than any object can be. Otherwise it returns nil.
func (h *holdback) failure(name string) error {
	switch {
	case h.err != nil:
		return fmt.Errorf("codec: object %s: read: %w", name, h.err)
	case h.eof && h.read < minObject:
		return fmt.Errorf("codec: object %s: %w: truncated: %d bytes, fewer than the %d of a header and a trailer",
			name, ErrCorrupt, h.read, minObject)
	}
	return nil
}

// verify checks the trailer once Read returned io.EOF, and returns the
// payload length and the checksum it records.
func (h *holdback) verify(name string) (int64, [sumLen]byte, error) {
	var sum [sumLen]byte
	if !h.eof || h.end-h.start != trailerLen {
		return 0, sum, fmt.Errorf("codec: object %s: trailer checked before the end of the object", name)
	}
	t := h.buf[h.start:h.end]
	h.hash.Write(t[:lengthLen])
	got := h.hash.Sum(nil)
	if !bytes.Equal(got, t[lengthLen:]) {
		return 0, sum, fmt.Errorf("codec: object %s: %w: checksum mismatch: stored bytes hash to %x, trailer records %x",
			name, ErrCorrupt, got, t[lengthLen:])
	}
	size := binary.BigEndian.Uint64(t[:lengthLen])
	if size > math.MaxInt64 {
		return 0, sum, fmt.Errorf("codec: object %s: %w: trailer records a payload of %d bytes", name, ErrCorrupt, size)
	}
	copy(sum[:], got)
	return int64(size), sum, nil
}
