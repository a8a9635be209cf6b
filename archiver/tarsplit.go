package archiver

import (
	"bytes"
	"errors"
	"strconv"
)

// tarBlockLen is the tar block: headers and padded data.
const tarBlockLen = 512

// maxParts bounds an archive's parts: about 2 MB of backup.json.
const maxParts = 10000

// splitWriter stores one tar archive of a base backup as several parts, each
// a whole tar archive of its own, cut at entry boundaries once a part holds
// limit bytes, so that a restore can extract the parts in parallel. It reads
// the headers the server writes; at a header it does not understand (a
// checksum mismatch, a PAX header that could change the next entry's size, a
// type it does not know) it stops cutting and writes the rest of the archive
// into the part it is in, which is always safe.
//
// A finished part is closed while the next one is written; at most one
// closes at a time, which bounds memory to two parts' uploads. An archive
// has at most maxParts parts, the last one taking the rest, so that
// backup.json stays small.
type splitWriter struct {
	open  func(part int) BackupWriter
	limit int64

	cur     BackupWriter
	part    int
	written int64 // bytes in the current part
	closing chan error
	err     error // the first failure, which every later call returns

	hdr      [tarBlockLen]byte
	hdrFill  int
	skip     int64 // data and padding of the current entry still to pass
	extended bool  // the last header describes the next entry: no cut before it
	stop     bool  // no more cuts in this archive
}

func newSplitWriter(limit int64, open func(part int) BackupWriter) *splitWriter {
	return &splitWriter{open: open, limit: limit, cur: open(0)}
}

func (w *splitWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

func (w *splitWriter) write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		switch {
		case w.stop:
			if err := w.emit(p); err != nil {
				return 0, err
			}
			return total, nil
		case w.skip > 0:
			n := int(min(w.skip, int64(len(p))))
			if err := w.emit(p[:n]); err != nil {
				return 0, err
			}
			w.skip -= int64(n)
			p = p[n:]
		default:
			n := copy(w.hdr[w.hdrFill:], p)
			w.hdrFill += n
			p = p[n:]
			if w.hdrFill < tarBlockLen {
				continue
			}
			w.hdrFill = 0
			if err := w.header(); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

// header handles a whole header block: it cuts before it when the part is
// full, then passes it on and learns how much data follows.
func (w *splitWriter) header() error {
	size, typ, ok := parseTarHeader(&w.hdr)
	if !ok {
		w.stop = true // the end-of-archive marker, or a header not understood
		return w.emit(w.hdr[:])
	}
	if w.written >= w.limit && !w.extended && w.part+1 < maxParts {
		if err := w.cut(); err != nil {
			return err
		}
	}
	switch {
	case typ == 0 && bytes.HasSuffix(bytes.TrimRight(w.hdr[:100], "\x00"), []byte("/")):
		w.stop = true // an old-style directory, which tar readers give no data
	case typ == '0' || typ == 0 || typ == '7': // regular files
	case typ == 'L' || typ == 'K': // GNU long name or link name of the next entry
	case typ == '1' || typ == '2' || typ == '5': // hard link, symlink, directory: no data
		size = 0
	default:
		// A PAX header may set the next entry's size; other types are
		// not PostgreSQL's.
		w.stop = true
	}
	w.extended = typ == 'L' || typ == 'K'
	w.skip = (size + tarBlockLen - 1) &^ (tarBlockLen - 1)
	return w.emit(w.hdr[:])
}

// cut ends the current part with an end-of-archive marker and starts the
// next.
func (w *splitWriter) cut() error {
	if err := w.emit(tarEndBlocks[:]); err != nil {
		return err
	}
	if err := w.waitClosing(); err != nil {
		return err
	}
	done, cur := make(chan error, 1), w.cur
	go func() { done <- cur.CloseWithError(nil) }()
	w.closing = done
	w.part++
	w.cur, w.written = w.open(w.part), 0
	return nil
}

func (w *splitWriter) waitClosing() error {
	if w.closing == nil {
		return nil
	}
	err := <-w.closing
	w.closing = nil
	return err
}

func (w *splitWriter) emit(p []byte) error {
	if _, err := w.cur.Write(p); err != nil {
		return err
	}
	w.written += int64(len(p))
	return nil
}

// CloseWithError ends the last part, waiting for every part's store. An
// archive that ends before its end-of-archive marker fails: it could not
// be restored.
func (w *splitWriter) CloseWithError(err error) error {
	if err == nil {
		err = w.err
	}
	if err == nil && !w.stop {
		err = errors.New("the server's tar archive ended before its end-of-archive marker")
	}
	cerr := w.cur.CloseWithError(err)
	werr := w.waitClosing()
	switch {
	case err != nil:
		return err
	case cerr != nil:
		return cerr
	}
	return werr
}

// parseTarHeader reads the size and type of a ustar or GNU header block.
// It fails on a zero block (the end of the archive) and on any block whose
// checksum or size field does not parse.
func parseTarHeader(b *[tarBlockLen]byte) (size int64, typ byte, ok bool) {
	sum, ok := parseTarOctal(b[148:156])
	if !ok {
		return 0, 0, false
	}
	var unsigned, signed int64
	for i, c := range b {
		if i >= 148 && i < 156 {
			c = ' '
		}
		unsigned += int64(c)
		signed += int64(int8(c))
	}
	if sum != unsigned && sum != signed {
		return 0, 0, false
	}
	field := b[124:136]
	if field[0]&0x80 != 0 { // base-256, for sizes past 8 GiB
		if field[0] != 0x80 || bytes.Count(field[1:4], []byte{0}) != 3 {
			return 0, 0, false // negative or beyond int64
		}
		for _, c := range field[4:] {
			size = size<<8 | int64(c)
		}
		return size, b[156], size >= 0
	}
	size, ok = parseTarOctal(field)
	return size, b[156], ok
}

// parseTarOctal parses a NUL- or space-terminated octal field, possibly
// space-padded in front.
func parseTarOctal(f []byte) (int64, bool) {
	s := string(bytes.Trim(f, " \x00"))
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 8, 64)
	return v, err == nil && v >= 0
}
