package storagetest

import (
	"crypto/sha256"
	"hash"
	"io"
	"math/rand/v2"
)

// randomReader yields size incompressible bytes from a seeded generator and
// hashes them on the way, so that a large object needs no memory to check.
type randomReader struct {
	size, off int64
	gen       *rand.ChaCha8
	h         hash.Hash
}

func newRandomReader(size int64, seed byte) *randomReader {
	var s [32]byte
	s[0] = seed
	return &randomReader{size: size, gen: rand.NewChaCha8(s), h: sha256.New()}
}

func (r *randomReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.size-r.off)]
	_, _ = r.gen.Read(p)
	r.h.Write(p)
	r.off += int64(len(p))
	return len(p), nil
}

// sum is the digest of everything read so far.
func (r *randomReader) sum() []byte { return r.h.Sum(nil) }
