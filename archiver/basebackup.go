package archiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walship/walship/internal/wal"
)

// BackupArchive is one tar stream of a base backup.
type BackupArchive struct {
	// Name is "base.tar" for the main data directory and "<oid>.tar" for a
	// tablespace.
	Name string
	// OID is the tablespace's OID, 0 for the main data directory.
	OID uint32
	// Location is the tablespace's directory on the server, "" for the
	// main data directory.
	Location string
}

// BackupWriter receives one stream of a base backup.
//
// Write must consume p before it returns and must not retain it:
// StreamBaseBackup hands over the connection's receive buffer, which the
// next message overwrites. A Write that returns without error has taken all
// of p. CloseWithError(nil) ends the stream well and makes it visible;
// CloseWithError with an error aborts it, and nothing of it may become
// visible. StreamBaseBackup calls CloseWithError exactly once per writer.
type BackupWriter interface {
	io.Writer
	CloseWithError(err error) error
}

// BackupSink receives a base backup's streams one at a time, in the order
// the server sends them: every archive, then the manifest.
//
// Only the newest writer is written to, but a stream's writer is not closed
// when its data ends: the server can still fail the backup after the last
// byte (checksum failures are reported last), so every writer stays open
// until the server has finished the command. Then all of them are closed
// well, in the order they were opened; on any failure all that are open are
// aborted. A sink must therefore allow several open writers, of which all
// but the newest are idle.
type BackupSink interface {
	// Archive opens the writer of the tar archive a, which the server is
	// about to send. When it fails, it leaves nothing open.
	Archive(ctx context.Context, a BackupArchive) (BackupWriter, error)
	// Manifest opens the writer of the backup manifest (JSON), which the
	// server sends after the last archive.
	Manifest(ctx context.Context) (BackupWriter, error)
}

// BaseBackupOptions says how the server takes the backup. Every backup is
// taken without WAL (the archiver's slot holds it), without waiting for the
// server's own WAL archiving, with a tablespace_map file, and with a manifest
// whose file checksums are CRC-32C; the server verifies page checksums and
// compresses nothing.
type BaseBackupOptions struct {
	// Label names the backup in backup_label; required, one line.
	Label string
	// Fast asks for an immediate checkpoint, so that the backup starts at
	// once. The default, a spread checkpoint, is kinder to a busy server
	// but can take about checkpoint_timeout * checkpoint_completion_target.
	Fast bool
	// MaxRate bounds the server's transfer rate in kB/s, from 32 to
	// 1048576; 0 means unlimited.
	MaxRate int
	// Log receives the server's notices (per-file checksum warnings, say)
	// at warn level; nil discards them.
	Log *slog.Logger
	// Estimate, if set, asks the server for PROGRESS (a scan of the data
	// directory before the backup, as pg_basebackup -P makes) and gets the
	// backup's estimated size in bytes, before its data.
	Estimate func(bytes int64)
}

// BaseBackupResult is what the server reports about a base backup.
type BaseBackupResult struct {
	// StartLSN is where recovery from the backup must begin (START WAL
	// LOCATION in backup_label), on StartTLI.
	StartLSN wal.LSN
	StartTLI wal.TimeLineID
	// EndLSN is where the backup becomes consistent, on EndTLI: recovery
	// needs all WAL from StartLSN to EndLSN.
	EndLSN wal.LSN
	EndTLI wal.TimeLineID
	// Archives lists the archives in the order they were streamed.
	Archives []BackupArchive
}

// ErrChecksumFailure marks a base backup the server failed because data
// files hold pages whose checksums do not match. The error also holds the
// server's *pgconn.PgError (SQLSTATE XX001).
var ErrChecksumFailure = errors.New("checksum failures were found in the data files")

// Bounds on what the server sends.
const (
	// maxBackupPath is PostgreSQL's MAXPGPATH, which bounds archive names
	// and tablespace locations.
	maxBackupPath = 1024
	// maxBackupTablespaces bounds the rows of the tablespace list.
	maxBackupTablespaces = 10000
	// maxBackupMessage bounds one protocol message during a base backup.
	// CopyData carries at most max(32 kB, BLCKSZ) of data, and BLCKSZ is at
	// most 32 kB; the rest of the allowance is for long error messages.
	maxBackupMessage = 1 << 20
	// pgprotoMaxBodyLen is pgproto3's own default limit, restored when the
	// backup ends.
	pgprotoMaxBodyLen = 0x3fffffff - 1
	// tarEndLen is the length of the two zero blocks that end a tar archive, which
	// PostgreSQL 14 leaves to the client.
	tarEndLen = 1024
	// minBackupRate and maxBackupRate are the MAX_RATE values the server accepts.
	minBackupRate = 32
	maxBackupRate = 1048576
)

// sqlstateDataCorrupted is ERRCODE_DATA_CORRUPTED, which BASE_BACKUP raises
// after sending everything when page checksums failed.
const sqlstateDataCorrupted = "XX001"

// Attribute keys of base backup log records.
const (
	backupAttrNotice   = "notice"
	backupAttrSeverity = "severity"
	backupAttrCode     = "sqlstate"
	backupAttrDetail   = "detail"
	backupAttrArchive  = "archive"
)

// StreamBaseBackup runs BASE_BACKUP on conn, a physical replication
// connection (see connect), to a server of versionNum (server_version_num),
// and hands every archive and then the manifest to sink. It returns once the
// server has finished the command and every writer is closed well.
//
// The bytes go straight from the connection to the writers: nothing is
// buffered here. On any error every writer still open is aborted with it
// and the error is returned; the connection is then in an unknown state and
// must be closed. After success it is idle and can run another command.
func StreamBaseBackup(ctx context.Context, conn *pgconn.PgConn, versionNum int, opts BaseBackupOptions, sink BackupSink) (BaseBackupResult, error) {
	sql, err := baseBackupSQL(versionNum, opts)
	if err != nil {
		return BaseBackupResult{}, fmt.Errorf("base backup: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &backupStream{ctx: ctx, sink: sink, log: log, copyStream: versionNum >= 150000, listed: map[uint32]bool{}, estimate: opts.Estimate}

	fe := conn.Frontend()
	fe.SetMaxBodyLen(maxBackupMessage)
	defer fe.SetMaxBodyLen(pgprotoMaxBodyLen)
	fe.SendQuery(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		return BaseBackupResult{}, fmt.Errorf("base backup: send BASE_BACKUP: %w", err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return BaseBackupResult{}, s.fail(fmt.Errorf("receive: %w", explainServerError(err)))
		}
		done, err := s.handle(msg)
		if err != nil {
			return BaseBackupResult{}, s.fail(err)
		}
		if done {
			return s.res, nil
		}
	}
}

// baseBackupSQL builds the BASE_BACKUP command for the server's version:
// PostgreSQL 15 replaced the keyword options with a parenthesized list.
func baseBackupSQL(versionNum int, o BaseBackupOptions) (string, error) {
	if versionNum < 140000 {
		return "", fmt.Errorf("server_version_num %d: walship supports PostgreSQL 14 and later", versionNum)
	}
	if o.Label == "" {
		return "", errors.New("a backup label is required")
	}
	// backup_label holds the label on one line; the server reads it back
	// line by line, and the protocol cannot carry a NUL.
	if strings.ContainsAny(o.Label, "\x00\r\n") {
		return "", fmt.Errorf("backup label %q: use one line without NUL characters", o.Label)
	}
	if o.MaxRate != 0 && (o.MaxRate < minBackupRate || o.MaxRate > maxBackupRate) {
		return "", fmt.Errorf("maximum transfer rate %d kB/s: use %d to %d, or 0 for unlimited", o.MaxRate, minBackupRate, maxBackupRate)
	}
	// The replication grammar's quoted strings know no backslash escapes;
	// a quote is doubled.
	label := "'" + strings.ReplaceAll(o.Label, "'", "''") + "'"
	if versionNum < 150000 {
		opts := []string{"LABEL " + label}
		if o.Fast {
			opts = append(opts, "FAST")
		}
		opts = append(opts, "NOWAIT")
		if o.Estimate != nil {
			opts = append(opts, "PROGRESS")
		}
		if o.MaxRate != 0 {
			opts = append(opts, "MAX_RATE "+strconv.Itoa(o.MaxRate))
		}
		opts = append(opts, "TABLESPACE_MAP", "MANIFEST 'yes'", "MANIFEST_CHECKSUMS 'CRC32C'")
		return "BASE_BACKUP " + strings.Join(opts, " "), nil
	}
	opts := []string{"LABEL " + label}
	if o.Fast {
		opts = append(opts, "CHECKPOINT 'fast'")
	}
	opts = append(opts, "WAIT false")
	if o.Estimate != nil {
		opts = append(opts, "PROGRESS")
	}
	if o.MaxRate != 0 {
		opts = append(opts, "MAX_RATE "+strconv.Itoa(o.MaxRate))
	}
	opts = append(opts, "TABLESPACE_MAP", "MANIFEST 'yes'", "MANIFEST_CHECKSUMS 'CRC32C'")
	return "BASE_BACKUP (" + strings.Join(opts, ", ") + ")", nil
}

// backupSet is the result set being read.
type backupSet int

const (
	backupSetNone backupSet = iota
	backupSetStart
	backupSetTablespaces
	backupSetEnd
)

// backupTablespace is one row of the tablespace list. The main data
// directory's row has OID 0 and no location.
type backupTablespace struct {
	oid      uint32
	location string
	size     int64 // estimated kB with PROGRESS, else -1
}

// backupStream reads the server's answer to BASE_BACKUP:
//
//	start position (recptr, tli)            one row
//	tablespace list (spcoid, spclocation, size)
//	PostgreSQL 14: one COPY per tablespace row, in list order, of a raw tar
//	  without its end blocks; then one COPY of the manifest
//	PostgreSQL 15+: one COPY of tagged messages: 'n' new archive, 'd' data,
//	  'p' progress, 'm' manifest follows
//	end position (recptr, tli)              one row
//	ErrorResponse XX001 if page checksums failed
//	CommandComplete, ReadyForQuery
//
// PostgreSQL 14 to 18 end every result set with CommandComplete (SELECT),
// and the command with CommandComplete (BASE_BACKUP); a result set is also
// taken as ended by whatever follows it.
type backupStream struct {
	ctx        context.Context
	sink       BackupSink
	log        *slog.Logger
	copyStream bool // PostgreSQL 15+: one COPY of tagged messages

	res         BaseBackupResult
	tablespaces []backupTablespace
	estimate    func(int64) // of the tablespaces listed so far, in bytes
	estimated   int64
	listed      map[uint32]bool // tablespace OIDs in the list

	set               backupSet // being read
	rows              int       // rows of set so far
	gotStart, gotList bool
	gotEnd            bool
	copies            int           // CopyOutResponses so far
	inCopy            bool          // between CopyOutResponse and CopyDone
	manifest          bool          // the manifest stream has begun
	streams           []*sinkWriter // opened and not yet closed, oldest first
	cur               *sinkWriter   // receives data; nil between streams
	warnings          int           // server warnings so far
	firstWarning      string        // the first one's message
}

// sinkWriter is one open writer.
type sinkWriter struct {
	name   string
	w      BackupWriter
	tar    bool // needs the tar end blocks on PostgreSQL 14
	closed bool
}

// handle processes one message and reports whether the backup is done.
func (s *backupStream) handle(msg pgproto3.BackendMessage) (bool, error) {
	switch m := msg.(type) {
	case *pgproto3.RowDescription:
		return false, s.rowDescription(m)
	case *pgproto3.DataRow:
		return false, s.dataRow(m)
	case *pgproto3.CommandComplete:
		if s.inCopy {
			return false, errors.New("server ended a command inside the COPY stream")
		}
		return false, s.closeSet()
	case *pgproto3.CopyOutResponse:
		return false, s.copyOut()
	case *pgproto3.CopyData:
		if !s.inCopy {
			return false, errors.New("server sent CopyData outside a COPY stream")
		}
		if s.copyStream {
			return false, s.taggedData(m.Data)
		}
		return false, s.write(m.Data)
	case *pgproto3.CopyDone:
		return false, s.copyDone()
	case *pgproto3.ReadyForQuery:
		return true, s.finish()
	case *pgproto3.ErrorResponse:
		return false, s.serverError(pgconn.ErrorResponseToPgError(m))
	case *pgproto3.NoticeResponse:
		s.notice(m)
		return false, nil
	case *pgproto3.ParameterStatus:
		return false, nil
	}
	return false, fmt.Errorf("unexpected %T from the server", msg)
}

// closeSet ends the result set being read, checking its row count.
func (s *backupStream) closeSet() error {
	set, rows := s.set, s.rows
	s.set, s.rows = backupSetNone, 0
	switch set {
	case backupSetStart, backupSetEnd:
		if rows != 1 {
			return fmt.Errorf("server sent %d rows for the backup position, want 1", rows)
		}
	case backupSetTablespaces:
		base := 0
		for _, ts := range s.tablespaces {
			if ts.oid == 0 {
				base++
			}
		}
		if base != 1 {
			return fmt.Errorf("server listed %d main data directories, want 1", base)
		}
	}
	return nil
}

func (s *backupStream) rowDescription(m *pgproto3.RowDescription) error {
	if s.inCopy {
		return errors.New("server started a result set inside the COPY stream")
	}
	if err := s.closeSet(); err != nil {
		return err
	}
	names := make([]string, len(m.Fields))
	for i, f := range m.Fields {
		names[i] = string(f.Name)
	}
	cols := strings.Join(names, ",")
	switch {
	case cols == "recptr,tli" && !s.gotStart:
		s.set, s.gotStart = backupSetStart, true
	case cols == "spcoid,spclocation,size" && s.gotStart && !s.gotList:
		s.set, s.gotList = backupSetTablespaces, true
	case cols == "recptr,tli" && s.copies > 0 && !s.gotEnd:
		if !s.manifest {
			return errors.New("server ended the backup without sending a manifest")
		}
		if len(s.res.Archives) != len(s.tablespaces) {
			return fmt.Errorf("server listed %d tablespaces (the main data directory included) but sent %d archives",
				len(s.tablespaces), len(s.res.Archives))
		}
		s.set, s.gotEnd = backupSetEnd, true
	default:
		return fmt.Errorf("unexpected result set (%.200s) from the server", cols)
	}
	return nil
}

func (s *backupStream) dataRow(m *pgproto3.DataRow) error {
	s.rows++
	switch s.set {
	case backupSetStart, backupSetEnd:
		lsn, tli, err := parseBackupPosition(m.Values)
		if err != nil {
			return err
		}
		if s.set == backupSetStart {
			s.res.StartLSN, s.res.StartTLI = lsn, tli
		} else {
			s.res.EndLSN, s.res.EndTLI = lsn, tli
		}
		return nil
	case backupSetTablespaces:
		if s.rows > maxBackupTablespaces {
			return fmt.Errorf("server listed more than %d tablespaces", maxBackupTablespaces)
		}
		ts, err := parseBackupTablespace(m.Values)
		if err != nil {
			return err
		}
		if s.listed[ts.oid] && ts.oid != 0 {
			return fmt.Errorf("server listed tablespace %d twice", ts.oid)
		}
		s.listed[ts.oid] = true
		s.tablespaces = append(s.tablespaces, ts)
		if s.estimate != nil && ts.size >= 0 {
			if ts.size > (math.MaxInt64-s.estimated)>>10 {
				return fmt.Errorf("server estimated tablespace %d at %d kB, past any backup's size", ts.oid, ts.size)
			}
			s.estimated += ts.size << 10
			s.estimate(s.estimated)
		}
		return nil
	}
	return errors.New("server sent a row outside a result set")
}

// parseBackupPosition parses a (recptr text, tli int8) row.
func parseBackupPosition(v [][]byte) (wal.LSN, wal.TimeLineID, error) {
	if len(v) != 2 || v[0] == nil || v[1] == nil || len(v[0]) > 32 || len(v[1]) > 32 {
		return 0, 0, errors.New("server sent a malformed backup position")
	}
	lsn, err := wal.ParseLSN(string(v[0]))
	if err != nil {
		return 0, 0, fmt.Errorf("server sent backup position %q: %w", v[0], err)
	}
	tli, err := strconv.ParseUint(string(v[1]), 10, 32)
	if err != nil || tli == 0 {
		return 0, 0, fmt.Errorf("server sent backup timeline %q", v[1])
	}
	return lsn, wal.TimeLineID(tli), nil
}

// parseBackupTablespace parses a (spcoid oid, spclocation text, size int8) row;
// the main data directory's has a NULL OID. The size, an estimate in kB, is
// NULL without PROGRESS.
func parseBackupTablespace(v [][]byte) (backupTablespace, error) {
	if len(v) != 3 {
		return backupTablespace{}, fmt.Errorf("server sent a tablespace row of %d columns, want 3", len(v))
	}
	size := int64(-1)
	if v[2] != nil {
		n, err := strconv.ParseInt(string(v[2]), 10, 64)
		if err != nil || n < 0 {
			return backupTablespace{}, fmt.Errorf("server sent tablespace size %.20q", v[2])
		}
		size = n
	}
	if v[0] == nil {
		if len(v[1]) != 0 {
			return backupTablespace{}, errors.New("server sent a location for the main data directory")
		}
		return backupTablespace{size: size}, nil
	}
	oid, err := parseBackupOID(v[0])
	if err != nil {
		return backupTablespace{}, fmt.Errorf("server sent tablespace OID %.20q", v[0])
	}
	if len(v[1]) == 0 || len(v[1]) >= maxBackupPath {
		return backupTablespace{}, fmt.Errorf("server sent a location of %d bytes for tablespace %d", len(v[1]), oid)
	}
	return backupTablespace{oid: oid, location: string(v[1]), size: size}, nil
}

// parseBackupOID parses a non-zero OID in canonical decimal.
func parseBackupOID(b []byte) (uint32, error) {
	n, err := strconv.ParseUint(string(b), 10, 32)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != string(b) {
		return 0, fmt.Errorf("invalid OID %.20q", b)
	}
	return uint32(n), nil
}

// serverError turns an ErrorResponse into the error to return.
func (s *backupStream) serverError(pgErr *pgconn.PgError) error {
	if pgErr.Code != sqlstateDataCorrupted {
		return fmt.Errorf("server: %w", explainServerError(pgErr))
	}
	// The server warns per file and block (SQLSTATE 01000), then fails the
	// command after the last byte.
	seen := ""
	switch {
	case s.warnings == 1:
		seen = fmt.Sprintf(" (%s)", s.firstWarning)
	case s.warnings > 1:
		seen = fmt.Sprintf(" (%s; %d warnings in all)", s.firstWarning, s.warnings)
	}
	return fmt.Errorf("%w%s: %w; the backup is not usable. The server's log and the warnings logged before name the files and blocks: "+
		"check the storage, restore or repair those relations (pg_amcheck helps find them all), then take a new backup",
		ErrChecksumFailure, seen, pgErr)
}

// notice logs a NoticeResponse and remembers the first warning for the
// error that may follow.
func (s *backupStream) notice(m *pgproto3.NoticeResponse) {
	if m.SeverityUnlocalized == "WARNING" || m.SeverityUnlocalized == "" && m.Severity == "WARNING" {
		if s.warnings == 0 {
			s.firstWarning = clipMessage(m.Message, 300)
		}
		s.warnings++
	}
	attrs := []any{slog.String(backupAttrNotice, m.Message), slog.String(backupAttrSeverity, m.Severity), slog.String(backupAttrCode, m.Code)}
	if m.Detail != "" {
		attrs = append(attrs, slog.String(backupAttrDetail, m.Detail))
	}
	if s.cur != nil {
		attrs = append(attrs, slog.String(backupAttrArchive, s.cur.name))
	}
	s.log.Warn("server notice during the base backup", attrs...)
}

// clipMessage shortens s to at most n bytes and whole characters.
func clipMessage(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}
