package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// zstdMagic starts every zstd frame (RFC 8878, section 3.1.1).
const zstdMagic = 0xFD2FB528

// errAfterFrame says that bytes follow the zstd frame in the body.
var errAfterFrame = errors.New("data after the zstd frame")

// frameStep is where a frameGuard is in the frame.
type frameStep int

// The parts of a zstd frame, in order.
const (
	stepMagic       frameStep = iota // 4 bytes
	stepDescriptor                   // 1 byte: Frame_Header_Descriptor
	stepHeaderRest                   // window, dictionary ID, content size
	stepBlockHeader                  // 3 bytes
	stepBlockBody                    // the block's bytes
	stepChecksum                     // 4 bytes when the frame has one
	stepDone                         // the frame ended; nothing may follow
)

// fieldLen is the length of the field collected in each step that collects
// one.
var fieldLen = [...]int{stepMagic: 4, stepDescriptor: 1, stepBlockHeader: 3}

// frameGuard passes a zstd stream through while following its frame
// structure, and fails when anything follows the first frame: the decoder
// would accept further frames, and skip skippable ones, but the stored
// format allows exactly one. It only reads headers and counts the rest, so
// it costs next to nothing.
type frameGuard struct {
	r           io.Reader
	step        frameStep
	field       [4]byte // the field being collected
	have        int     // bytes of field collected
	skip        int64   // bytes left to pass in this step
	last        bool    // the current block is the frame's last
	hasChecksum bool
	err         error // errAfterFrame, or a structure error
}

// Read reads from the stream, failing from the first byte after the frame.
func (g *frameGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if used := g.scan(p[:n]); used < n {
		return used, g.err
	}
	return n, err
}

// scan follows the frame through b and returns how many bytes of b belong
// to it; fewer than len(b) only when it sets g.err.
func (g *frameGuard) scan(b []byte) int {
	used := 0
	for used < len(b) {
		switch g.step {
		case stepBlockBody, stepHeaderRest, stepChecksum:
			k := int(min(g.skip, int64(len(b)-used)))
			used += k
			g.skip -= int64(k)
			if g.skip == 0 {
				g.next()
			}
			continue
		case stepDone:
			g.err = errAfterFrame
			return used
		}
		// Collect a fixed-size field: magic, descriptor or block header.
		want := fieldLen[g.step]
		k := copy(g.field[g.have:want], b[used:])
		g.have += k
		used += k
		if g.have < want {
			continue
		}
		g.have = 0
		if err := g.parse(); err != nil {
			g.err = err
			return used
		}
	}
	return used
}

// parse interprets a collected field and moves on.
func (g *frameGuard) parse() error {
	switch g.step {
	case stepMagic:
		if m := binary.LittleEndian.Uint32(g.field[:]); m != zstdMagic {
			return fmt.Errorf("body is not a zstd frame (magic %#08x)", m)
		}
		g.step = stepDescriptor
	case stepDescriptor:
		d := g.field[0]
		single := d&0x20 != 0
		g.hasChecksum = d&0x04 != 0
		g.skip = [4]int64{0, 1, 2, 4}[d&0x03] // dictionary ID
		g.skip += [4]int64{0, 2, 4, 8}[d>>6]  // frame content size
		if single && d>>6 == 0 {
			g.skip++ // a one-byte content size
		}
		if !single {
			g.skip++ // window descriptor
		}
		g.step = stepHeaderRest
		if g.skip == 0 {
			g.next()
		}
	case stepBlockHeader:
		h := uint32(g.field[0]) | uint32(g.field[1])<<8 | uint32(g.field[2])<<16
		g.last = h&1 != 0
		size := int64(h >> 3)
		switch (h >> 1) & 3 {
		case 1: // RLE: one byte repeated size times
			size = 1
		case 3:
			return errors.New("zstd block of reserved type")
		}
		g.skip = size
		g.step = stepBlockBody
		if size == 0 {
			g.next()
		}
	}
	return nil
}

// next moves past a step whose bytes have all been passed.
func (g *frameGuard) next() {
	switch g.step {
	case stepHeaderRest:
		g.step = stepBlockHeader
	case stepBlockBody:
		if !g.last {
			g.step = stepBlockHeader
			return
		}
		g.step, g.skip = stepDone, 0
		if g.hasChecksum {
			g.step, g.skip = stepChecksum, 4
		}
	case stepChecksum:
		g.step = stepDone
	}
}
