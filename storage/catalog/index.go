package catalog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/internal/walrec"
)

// IndexKey is the key of seg's index: the records of interest to recovery
// targets (commits and aborts with their times, restore points) that end in
// seg, as the archiver read them while streaming.
func IndexKey(seg wal.Segment, segSize uint64) string { return SegmentKey(seg, segSize) + ".idx" }

// indexMagic opens an index payload, with its format version.
var indexMagic = [5]byte{'W', 'S', 'I', 'X', 1}

// maxIndexEvents bounds what DecodeIndex accepts: a segment of 1 GiB holds
// at most one record per 24 bytes.
const maxIndexEvents = 1 << 26

// EncodeIndex encodes events compactly: deltas of LSNs and times as varints.
func EncodeIndex(events []walrec.Event) []byte {
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
	return b
}

var errIndex = errors.New("not a walship segment index")

// DecodeIndex decodes what EncodeIndex wrote.
func DecodeIndex(b []byte) ([]walrec.Event, error) {
	if len(b) < len(indexMagic) || [5]byte(b[:5]) != indexMagic {
		return nil, fmt.Errorf("%w (unknown header)", errIndex)
	}
	b = b[len(indexMagic):]
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
		return nil, err
	}
	if count > maxIndexEvents || count > uint64(len(b)) {
		return nil, fmt.Errorf("%w (%d events in %d bytes)", errIndex, count, len(b))
	}
	events := make([]walrec.Event, 0, count)
	var lsn, t int64
	for range count {
		if len(b) == 0 {
			return nil, fmt.Errorf("%w (truncated)", errIndex)
		}
		e := walrec.Event{Kind: walrec.Kind(b[0])}
		b = b[1:]
		d, err := sv()
		if err != nil {
			return nil, err
		}
		lsn += d
		length, err := uv()
		if err != nil {
			return nil, err
		}
		dt, err := sv()
		if err != nil {
			return nil, err
		}
		t += dt
		xid, err := uv()
		if err != nil {
			return nil, err
		}
		if lsn < 0 || xid > 1<<32-1 {
			return nil, fmt.Errorf("%w (bad event)", errIndex)
		}
		e.LSN, e.End, e.XID = wal.LSN(lsn), wal.LSN(lsn)+wal.LSN(length), uint32(xid)
		if t != 0 {
			e.Time = time.UnixMicro(t).UTC()
		}
		switch e.Kind {
		case walrec.RestorePoint:
			n, err := uv()
			if err != nil {
				return nil, err
			}
			if n > uint64(len(b)) || n > 64 {
				return nil, fmt.Errorf("%w (bad name)", errIndex)
			}
			e.Name, b = string(b[:n]), b[n:]
		case walrec.EndOfRecovery:
			v, err := uv()
			if err != nil {
				return nil, err
			}
			e.TLI = wal.TimeLineID(v)
		case walrec.BackupEnd:
			v, err := uv()
			if err != nil {
				return nil, err
			}
			e.BackupStart = wal.LSN(v)
		}
		events = append(events, e)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w (%d trailing bytes)", errIndex, len(b))
	}
	return events, nil
}
