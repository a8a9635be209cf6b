package archiver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// tarEndBlocks is the two zero blocks that end a tar archive. Writers must not
// modify what they are given, so one copy serves every archive.
var tarEndBlocks [tarEndLen]byte

// copyOut starts a COPY stream: on PostgreSQL 14 the archive of the next row
// of the tablespace list, then the manifest; on 15 and later the one stream
// that carries them all.
func (s *backupStream) copyOut() error {
	if s.inCopy {
		return errors.New("server started a COPY stream inside another")
	}
	if err := s.closeSet(); err != nil {
		return err
	}
	if !s.gotList || s.gotEnd {
		return errors.New("server started a COPY stream outside the backup's data")
	}
	s.inCopy = true
	s.copies++
	if s.copyStream {
		if s.copies > 1 {
			return errors.New("server started a second COPY stream")
		}
		return nil
	}
	switch i := s.copies - 1; {
	case i < len(s.tablespaces):
		return s.openArchive(archiveOfRow(s.tablespaces[i]))
	case i == len(s.tablespaces):
		return s.openManifest()
	}
	return errors.New("server started a COPY stream after the manifest")
}

// archiveOfRow names the archive of a tablespace list row as the server does.
func archiveOfRow(ts backupTablespace) BackupArchive {
	if ts.oid == 0 {
		return BackupArchive{Name: "base.tar"}
	}
	return BackupArchive{Name: fmt.Sprintf("%d.tar", ts.oid), OID: ts.oid, Location: ts.location}
}

// taggedData handles one CopyData message of PostgreSQL 15 and later.
func (s *backupStream) taggedData(b []byte) error {
	if len(b) == 0 {
		return errors.New("server sent an empty CopyData message")
	}
	switch b[0] {
	case 'n': // new archive: name and tablespace location, NUL-terminated
		if s.manifest {
			return errors.New("server began an archive after the manifest")
		}
		name, location, err := parseNewArchive(b[1:])
		if err != nil {
			return err
		}
		a, err := s.archiveNamed(name, location)
		if err != nil {
			return err
		}
		return s.openArchive(a)
	case 'd': // data of the current archive or of the manifest
		if s.cur == nil {
			return errors.New("server sent data before naming its archive")
		}
		return s.write(b[1:])
	case 'p': // progress: bytes sent so far, sent even without PROGRESS
		return nil
	case 'm': // the manifest follows
		if s.manifest {
			return errors.New("server began a second manifest")
		}
		return s.openManifest()
	}
	return fmt.Errorf("server sent a CopyData message of unknown type %q", b[0])
}

// parseNewArchive parses the body of an 'n' message.
func parseNewArchive(b []byte) (name, location string, err error) {
	name, rest, ok := cutNulString(b, maxBackupPath)
	if ok {
		location, rest, ok = cutNulString(rest, maxBackupPath)
	}
	if !ok || len(rest) != 0 {
		return "", "", errors.New("server sent a malformed new-archive message")
	}
	// pg_basebackup's checks: the name becomes a file name.
	if name == "" || name[0] == '.' || strings.ContainsAny(name, "/\\") {
		return "", "", fmt.Errorf("server sent invalid archive name %q", name)
	}
	return name, location, nil
}

// cutNulString splits a NUL-terminated string of fewer than limit bytes off
// b.
func cutNulString(b []byte, limit int) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 || i >= limit {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// archiveNamed maps an archive the server named to its tablespace, which
// must be one the server listed and not yet sent.
func (s *backupStream) archiveNamed(name, location string) (BackupArchive, error) {
	a := BackupArchive{Name: name, Location: location}
	if name != "base.tar" {
		digits, ok := strings.CutSuffix(name, ".tar")
		oid, err := parseBackupOID([]byte(digits))
		if !ok || err != nil {
			return BackupArchive{}, fmt.Errorf("server sent archive %q, but walship asks for uncompressed archives named base.tar or <oid>.tar", name)
		}
		a.OID = oid
	}
	listed := false
	for _, ts := range s.tablespaces {
		if ts.oid == a.OID {
			if ts.location != location {
				return BackupArchive{}, fmt.Errorf("server sent archive %q for location %q, but listed %q", name, location, ts.location)
			}
			listed = true
		}
	}
	if !listed {
		return BackupArchive{}, fmt.Errorf("server sent archive %q of a tablespace it did not list", name)
	}
	for _, prev := range s.res.Archives {
		if prev.OID == a.OID {
			return BackupArchive{}, fmt.Errorf("server sent archive %q twice", name)
		}
	}
	return a, nil
}

// openArchive ends the current stream and opens the archive a's writer.
func (s *backupStream) openArchive(a BackupArchive) error {
	s.cur = nil
	w, err := s.sink.Archive(s.ctx, a)
	if err != nil {
		return fmt.Errorf("open %s: %w", a.Name, err)
	}
	s.open(&sinkWriter{name: a.Name, w: w, tar: true})
	s.res.Archives = append(s.res.Archives, a)
	return nil
}

// openManifest ends the current stream and opens the manifest's writer.
func (s *backupStream) openManifest() error {
	s.cur = nil
	s.manifest = true
	w, err := s.sink.Manifest(s.ctx)
	if err != nil {
		return fmt.Errorf("open the manifest: %w", err)
	}
	s.open(&sinkWriter{name: "backup_manifest", w: w})
	return nil
}

func (s *backupStream) open(st *sinkWriter) {
	s.streams = append(s.streams, st)
	s.cur = st
}

// write hands p, which aliases the connection's receive buffer, to the
// current writer.
func (s *backupStream) write(p []byte) error {
	if s.cur == nil {
		return errors.New("server sent data outside an archive")
	}
	if len(p) == 0 {
		return nil
	}
	n, err := s.cur.w.Write(p)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", s.cur.name, err)
	}
	return nil
}

// copyDone ends a COPY stream. PostgreSQL 14 leaves the end of each tar
// archive to the client, as pg_basebackup does.
func (s *backupStream) copyDone() error {
	if !s.inCopy {
		return errors.New("server ended a COPY stream it had not started")
	}
	s.inCopy = false
	if !s.copyStream && s.cur != nil && s.cur.tar {
		if err := s.write(tarEndBlocks[:]); err != nil {
			return err
		}
	}
	s.cur = nil
	return nil
}

// finish ends the backup once the server has finished the command: every
// writer is closed well, oldest first.
func (s *backupStream) finish() error {
	if s.inCopy {
		return errors.New("server ended the command inside the COPY stream")
	}
	if err := s.closeSet(); err != nil {
		return err
	}
	if !s.gotEnd {
		return errors.New("server finished BASE_BACKUP without reporting where the backup ends")
	}
	for _, st := range s.streams {
		st.closed = true
		if err := st.w.CloseWithError(nil); err != nil {
			return fmt.Errorf("close %s: %w", st.name, err)
		}
	}
	s.streams = nil
	return nil
}

// fail aborts every writer still open with err and returns it.
func (s *backupStream) fail(err error) error {
	err = fmt.Errorf("base backup: %w", err)
	errs := []error{err}
	for _, st := range s.streams {
		if st.closed {
			continue
		}
		st.closed = true
		if aerr := st.w.CloseWithError(err); aerr != nil {
			errs = append(errs, fmt.Errorf("abort %s: %w", st.name, aerr))
		}
	}
	s.streams, s.cur = nil, nil
	if len(errs) == 1 {
		return err
	}
	return errors.Join(errs...)
}
