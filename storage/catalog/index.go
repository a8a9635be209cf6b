package catalog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/internal/walrec"
)

// IndexKey is the key of seg's index: the records of interest to recovery
// targets (commits and aborts with their times, restore points) that end in
// seg, as the archiver read them while streaming, and the carry that lets a
// reader start at the next segment without reading seg.
func IndexKey(seg wal.Segment, segSize uint64) string { return SegmentKey(seg, segSize) + ".idx" }

// indexMagic opens an index payload; its last byte is the format version:
// 1 lists events, 2 (written since) adds the carry into the next segment.
var indexMagic = [5]byte{'W', 'S', 'I', 'X', 2}

// maxIndexEvents bounds what DecodeIndex accepts: a segment of 1 GiB holds
// at most one record per 24 bytes.
const maxIndexEvents = 1 << 26

// maxCarry bounds the binary form of a carry DecodeIndex accepts.
const maxCarry = walrec.CarryMax + 64

// EncodeIndex encodes a segment's events compactly, deltas of LSNs and
// times as varints, then the carry taken at the segment's end, with its
// length first (0 when it is unknown).
func EncodeIndex(events []walrec.Event, carry walrec.Carry) []byte {
	b := append([]byte(nil), indexMagic[:]...)
	b = binary.AppendUvarint(b, uint64(len(events)))
	var prevLSN wal.LSN
	var prevTime int64
	for _, e := range events {
		b = append(b, byte(e.Kind))
		b = binary.AppendVarint(b, int64(e.LSN-prevLSN))
		b = binary.AppendUvarint(b, uint64(e.End-e.LSN))
		t := int64(0)
		if !e.Time.IsZero() {
			t = e.Time.UnixMicro()
		}
		b = binary.AppendVarint(b, t-prevTime)
		b = binary.AppendUvarint(b, uint64(e.XID))
		switch e.Kind {
		case walrec.RestorePoint:
			b = binary.AppendUvarint(b, uint64(len(e.Name)))
			b = append(b, e.Name...)
		case walrec.EndOfRecovery:
			b = binary.AppendUvarint(b, uint64(e.TLI))
		case walrec.BackupEnd:
			b = binary.AppendUvarint(b, uint64(e.BackupStart))
		}
		prevLSN, prevTime = e.LSN, t
	}
	c := carry.Append(nil)
	b = binary.AppendUvarint(b, uint64(len(c)))
	return append(b, c...)
}

var errIndex = errors.New("not a walship segment index")

// ReadIndex reads and decodes seg's index.
func (r *Repo) ReadIndex(ctx context.Context, seg wal.Segment, segSize uint64) ([]walrec.Event, walrec.Carry, error) {
	key := IndexKey(seg, segSize)
	// An event takes fewer bytes in the index than its record in the WAL.
	b, err := r.ReadAll(ctx, key, int64(segSize)+maxCarry+64)
	if err != nil {
		return nil, walrec.Carry{}, err
	}
	events, carry, err := DecodeIndex(b)
	if err != nil {
		return nil, walrec.Carry{}, fmt.Errorf("%s: %w", key, err)
	}
	return events, carry, nil
}

// DecodeIndex decodes what EncodeIndex wrote, and indexes of version 1,
// whose carry is unknown.
func DecodeIndex(b []byte) ([]walrec.Event, walrec.Carry, error) {
	var none walrec.Carry
	if len(b) < len(indexMagic) || [4]byte(b[:4]) != [4]byte(indexMagic[:4]) || b[4] < 1 {
		return nil, none, fmt.Errorf("%w (unknown header)", errIndex)
	}
	if b[4] > indexMagic[4] {
		return nil, none, fmt.Errorf("%w: its format %d is newer than this walship's %d; upgrade walship", errIndex, b[4], indexMagic[4])
	}
	version := b[4]
	events, b, err := decodeEvents(b[len(indexMagic):])
	if err != nil {
		return nil, none, err
	}
	if version == 1 {
		if len(b) != 0 {
			return nil, none, fmt.Errorf("%w (%d trailing bytes)", errIndex, len(b))
		}
		return events, none, nil
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxCarry || n != uint64(len(b)-k) {
		return nil, none, fmt.Errorf("%w (bad carry length)", errIndex)
	}
	carry, err := walrec.ParseCarry(b[k:])
	if err != nil {
		return nil, none, fmt.Errorf("%w (%w)", errIndex, err)
	}
	return events, carry, nil
}

// decodeEvents decodes the events at the start of b and returns them with
// the rest of b.
func decodeEvents(b []byte) ([]walrec.Event, []byte, error) {
	uv := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, fmt.Errorf("%w (truncated)", errIndex)
		}
		b = b[n:]
		return v, nil
	}
	sv := func() (int64, error) {
		v, n := binary.Varint(b)
		if n <= 0 {
			return 0, fmt.Errorf("%w (truncated)", errIndex)
		}
		b = b[n:]
		return v, nil
	}
	count, err := uv()
	if err != nil {
		return nil, nil, err
	}
	if count > maxIndexEvents || count > uint64(len(b)) {
		return nil, nil, fmt.Errorf("%w (%d events in %d bytes)", errIndex, count, len(b))
	}
	events := make([]walrec.Event, 0, count)
	var lsn, t int64
	for range count {
		if len(b) == 0 {
			return nil, nil, fmt.Errorf("%w (truncated)", errIndex)
		}
		e := walrec.Event{Kind: walrec.Kind(b[0])}
		b = b[1:]
		d, err := sv()
		if err != nil {
			return nil, nil, err
		}
		lsn += d
		length, err := uv()
		if err != nil {
			return nil, nil, err
		}
		dt, err := sv()
		if err != nil {
			return nil, nil, err
		}
		t += dt
		xid, err := uv()
		if err != nil {
			return nil, nil, err
		}
		if lsn < 0 || xid > 1<<32-1 {
			return nil, nil, fmt.Errorf("%w (bad event)", errIndex)
		}
		e.LSN, e.End, e.XID = wal.LSN(lsn), wal.LSN(lsn)+wal.LSN(length), uint32(xid)
		if t != 0 {
			e.Time = time.UnixMicro(t).UTC()
		}
		switch e.Kind {
		case walrec.RestorePoint:
			n, err := uv()
			if err != nil {
				return nil, nil, err
			}
			if n > uint64(len(b)) || n > 64 {
				return nil, nil, fmt.Errorf("%w (bad name)", errIndex)
			}
			e.Name, b = string(b[:n]), b[n:]
		case walrec.EndOfRecovery:
			v, err := uv()
			if err != nil {
				return nil, nil, err
			}
			e.TLI = wal.TimeLineID(v)
		case walrec.BackupEnd:
			v, err := uv()
			if err != nil {
				return nil, nil, err
			}
			e.BackupStart = wal.LSN(v)
		}
		events = append(events, e)
	}
	return events, b, nil
}
