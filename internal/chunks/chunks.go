// Package chunks holds byte streams in memory as pooled fixed-size chunks,
// so that objects of any size share one pool and never need a contiguous
// (and growing) buffer.
package chunks

import (
	"errors"
	"io"
	"sync"
)

// Size is the size of one chunk.
const Size = 256 << 10

var pool = sync.Pool{New: func() any { return new([Size]byte) }}

// Buffer is a byte stream held in pooled chunks: written with Write or
// Fill, read with ReadAt (io.NewSectionReader(b, 0, b.Len()) gives a
// seekable reader a client can rewind to retry a request). The zero value is
// an empty buffer. Release returns its memory.
type Buffer struct {
	chunks []*[Size]byte
	size   int64
}

// Len is the number of bytes in b.
func (b *Buffer) Len() int64 { return b.size }

// Write implements io.Writer; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		off := int(b.size % Size)
		if off == 0 {
			b.chunks = append(b.chunks, pool.Get().(*[Size]byte))
		}
		m := copy(b.chunks[len(b.chunks)-1][off:], p)
		b.size += int64(m)
		p = p[m:]
	}
	return n, nil
}

// Fill reads r into b until io.EOF or until b holds limit bytes. It
// returns the bytes added; an error other than io.EOF is returned with the
// bytes read before it.
func (b *Buffer) Fill(r io.Reader, limit int64) (int64, error) {
	start := b.size
	for b.size < limit {
		off := int(b.size % Size)
		if off == 0 {
			b.chunks = append(b.chunks, pool.Get().(*[Size]byte))
		}
		c := b.chunks[len(b.chunks)-1]
		m, err := io.ReadFull(r, c[off:min(Size, int64(off)+limit-b.size)])
		b.size += int64(m)
		if b.size%Size == 0 && m == 0 {
			pool.Put(c) // a chunk added for nothing
			b.chunks = b.chunks[:len(b.chunks)-1]
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return b.size - start, nil
		}
		if err != nil {
			return b.size - start, err
		}
	}
	return b.size - start, nil
}

// ReadAt implements io.ReaderAt.
func (b *Buffer) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("chunks: negative offset")
	}
	n := 0
	for n < len(p) && off < b.size {
		end := min(Size, b.size-off/Size*Size)
		m := copy(p[n:], b.chunks[off/Size][off%Size:end])
		n += m
		off += int64(m)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Reader returns a reader of b's bytes from the start.
func (b *Buffer) Reader() *io.SectionReader { return io.NewSectionReader(b, 0, b.size) }

// Release returns b's chunks to the pool and empties b. Readers of b must
// be done with it.
func (b *Buffer) Release() {
	for _, c := range b.chunks {
		pool.Put(c)
	}
	b.chunks, b.size = nil, 0
}
