package archiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzBaseBackupStream feeds any sequence of server messages to the state
// machine that reads BASE_BACKUP's answer, with a sink that records every
// call and fails its failAt-th one. Nothing may panic; data goes only to
// the newest writer, opened for an archive the server listed; every writer
// ends exactly once, well only when the backup succeeds; the size estimate
// never decreases nor goes below zero.
//
// The script has one message a line (see fuzzMessages), so that the fuzzer
// can grow and shrink values without keeping lengths right.
func FuzzBaseBackupStream(f *testing.F) {
	tablespaceRows := func(sizes ...string) []pgproto3.BackendMessage {
		m := bbList(true)
		m[1].(*pgproto3.DataRow).Values[2] = []byte(sizes[0])
		m[2].(*pgproto3.DataRow).Values[2] = []byte(sizes[1])
		return m
	}
	pg14 := bbScript(bbPosition("0/2000028"), tablespaceRows("0", "1024"),
		bbCopyOut, &pgproto3.CopyData{Data: []byte("tablespace")}, bbDone,
		bbCopyOut, &pgproto3.CopyData{Data: []byte("base")}, bbDone,
		bbCopyOut, &pgproto3.CopyData{Data: []byte("{}")}, bbDone,
		bbPosition("0/2000100"), bbEnd)
	warned := bbScript(bbStream15()[:10],
		&pgproto3.NoticeResponse{Severity: "WARNING", Message: "checksum verification failed in file \"base/1/2\", block 0"},
		bbStream15()[10:len(bbStream15())-2],
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "XX001", Message: "checksum verification failure during base backup"})
	for _, s := range []struct {
		script         []pgproto3.BackendMessage
		pg15, estimate bool
		failAt         uint8
	}{
		{bbStream15(), true, false, 0},
		{bbStream15(), true, true, 4},
		{bbScript(bbPosition("0/1"), tablespaceRows("100", "7"), bbStream15()[7:]), true, true, 0},
		{pg14, false, true, 0},
		{pg14, false, false, 6},
		{warned, true, false, 0},
	} {
		f.Add(fuzzScript(s.script), s.pg15, s.estimate, s.failAt)
	}
	f.Fuzz(func(t *testing.T, script []byte, pg15, estimate bool, failAt uint8) {
		sink := &fuzzSink{t: t, failAt: int(failAt), closeFailed: -1}
		s := &backupStream{ctx: context.Background(), sink: sink, log: slog.New(slog.DiscardHandler),
			copyStream: pg15, listed: map[uint32]bool{}}
		var estimates []int64
		if estimate {
			s.estimate = func(n int64) { estimates = append(estimates, n) }
		}
		var err error
		done := false
		for _, m := range fuzzMessages(script) {
			if done, err = s.handle(m); err != nil || done {
				break
			}
		}
		if !done && err == nil {
			err = errors.New("the server hung up")
		}
		if err != nil {
			s.fail(err)
		}

		for i, n := range estimates {
			if n < 0 || i > 0 && n < estimates[i-1] {
				t.Fatalf("estimates %v: negative or decreasing", estimates)
			}
		}
		// On failure, only the writers closed before one that failed to
		// close stay closed well.
		closedWell := err == nil || sink.closeFailed >= 0
		for i, w := range sink.writers {
			if i == sink.closeFailed {
				closedWell = false
			}
			switch {
			case w.ends != 1:
				t.Fatalf("%s ended %d times", w.name, w.ends)
			case closedWell && w.err != nil:
				t.Fatalf("%s aborted (%v) though the backup succeeded", w.name, w.err)
			case !closedWell && w.err == nil:
				t.Fatalf("%s closed well though the backup failed: %v", w.name, err)
			}
		}
		if err != nil {
			return
		}
		if fmt.Sprint(s.res.Archives) != fmt.Sprint(sink.archives) {
			t.Fatalf("result lists archives %v, the sink was given %v", s.res.Archives, sink.archives)
		}
		if len(sink.archives) != len(s.tablespaces) || len(sink.writers) != len(sink.archives)+1 || sink.writers[len(sink.writers)-1].name != "backup_manifest" {
			t.Fatalf("succeeded with %d tablespaces listed, archives %v, %d writers", len(s.tablespaces), sink.archives, len(sink.writers))
		}
		if s.res.StartTLI == 0 || s.res.EndTLI == 0 {
			t.Fatalf("succeeded without a start or end position: %+v", s.res)
		}
		for _, w := range sink.writers {
			if !pg15 && w.name != "backup_manifest" && !bytes.HasSuffix(w.data, tarEndBlocks[:]) {
				t.Fatalf("%s does not end with the tar end blocks", w.name)
			}
		}
	})
}

// fuzzScript writes msgs as FuzzBaseBackupStream's script.
func fuzzScript(msgs []pgproto3.BackendMessage) []byte {
	var b []byte
	field := func(sep byte, v []byte) {
		if sep != 0 {
			b = append(b, sep)
		}
		if v == nil {
			b = append(b, '~')
			return
		}
		for _, c := range v {
			if c == '\\' || c == '\n' || c == ',' || c == '~' {
				b = append(b, '\\')
			}
			b = append(b, c)
		}
	}
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.RowDescription:
			b = append(b, 'T')
			for i, fd := range m.Fields {
				field(map[bool]byte{true: ','}[i > 0], fd.Name)
			}
		case *pgproto3.DataRow:
			b = append(b, 'D')
			for i, v := range m.Values {
				field(map[bool]byte{true: ','}[i > 0], v)
			}
		case *pgproto3.CommandComplete:
			b = append(b, 'C')
			field(0, m.CommandTag)
		case *pgproto3.CopyOutResponse:
			b = append(b, 'H')
		case *pgproto3.CopyData:
			b = append(b, 'd')
			field(0, m.Data)
		case *pgproto3.CopyDone:
			b = append(b, 'c')
		case *pgproto3.ReadyForQuery:
			b = append(b, 'Z')
		case *pgproto3.ErrorResponse:
			b = append(b, 'E')
			field(0, []byte(m.Code))
			field(',', []byte(m.Message))
		case *pgproto3.NoticeResponse:
			b = append(b, 'N')
			field(0, []byte(m.Severity))
			field(',', []byte(m.Message))
		default:
			panic(fmt.Sprintf("fuzzScript: %T", m))
		}
		b = append(b, '\n')
	}
	return b
}

// fuzzMessages reads a script: one message a line, its type's byte as the
// protocol spells it (T, D, C, H CopyOutResponse, d, c, Z, E, N, S; others
// give a NoData) then its fields, separated by commas. A backslash takes the
// next byte as it is, and a field of a lone ~ is NULL. CopyData and
// CommandComplete take the whole line as their one field.
func fuzzMessages(b []byte) []pgproto3.BackendMessage {
	var msgs []pgproto3.BackendMessage
	for len(b) > 0 {
		tag := b[0]
		b = b[1:]
		var fields [][]byte
		var line, cur []byte
		escaped := false
		end := func() {
			switch {
			case len(cur) == 1 && cur[0] == '~' && !escaped:
				cur = nil
			case cur == nil:
				cur = []byte{}
			}
			fields = append(fields, cur)
			cur, escaped = nil, false
		}
	scan:
		for len(b) > 0 {
			c := b[0]
			b = b[1:]
			switch {
			case c == '\\' && len(b) > 0:
				c, b, escaped = b[0], b[1:], true
			case c == '\n':
				break scan
			case c == ',':
				line = append(line, c)
				end()
				continue
			}
			line = append(line, c)
			cur = append(cur, c)
		}
		end()
		str := func(i int) string {
			if i < len(fields) {
				return string(fields[i])
			}
			return ""
		}
		var m pgproto3.BackendMessage
		switch tag {
		case 'T':
			rd := &pgproto3.RowDescription{}
			for _, name := range fields {
				rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: name})
			}
			m = rd
		case 'D':
			m = &pgproto3.DataRow{Values: fields}
		case 'C':
			m = &pgproto3.CommandComplete{CommandTag: line}
		case 'H':
			m = &pgproto3.CopyOutResponse{}
		case 'd':
			m = &pgproto3.CopyData{Data: line}
		case 'c':
			m = &pgproto3.CopyDone{}
		case 'Z':
			m = &pgproto3.ReadyForQuery{TxStatus: 'I'}
		case 'E':
			m = &pgproto3.ErrorResponse{Severity: "ERROR", Code: str(0), Message: str(1)}
		case 'N':
			m = &pgproto3.NoticeResponse{Severity: str(0), Message: str(1)}
		case 'S':
			m = &pgproto3.ParameterStatus{Name: str(0), Value: str(1)}
		default:
			m = &pgproto3.NoData{}
		}
		msgs = append(msgs, m)
	}
	return msgs
}

var errFuzzSink = errors.New("fuzz sink: failed")

// fuzzSink records what the stream does with it, and fails its failAt-th
// call (1 the first; 0 never): an open, a write or a close.
type fuzzSink struct {
	t           *testing.T
	failAt      int
	calls       int
	archives    []BackupArchive
	writers     []*fuzzWriter // in the order opened
	closeFailed int           // the writer that failed to close well; -1 if none
}

// fail counts a call and says whether it fails.
func (s *fuzzSink) fail() bool {
	s.calls++
	return s.calls == s.failAt
}

func (s *fuzzSink) Archive(_ context.Context, a BackupArchive) (BackupWriter, error) {
	want := "base.tar"
	if a.OID != 0 {
		want = fmt.Sprintf("%d.tar", a.OID)
	}
	if a.Name != want || (a.OID == 0) != (a.Location == "") || len(a.Location) >= maxBackupPath {
		s.t.Fatalf("archive %+v opened", a)
	}
	for _, prev := range s.archives {
		if prev.OID == a.OID {
			s.t.Fatalf("archive %s opened twice", a.Name)
		}
	}
	if s.fail() {
		return nil, errFuzzSink
	}
	s.archives = append(s.archives, a)
	return s.open(a.Name), nil
}

func (s *fuzzSink) Manifest(context.Context) (BackupWriter, error) {
	for _, w := range s.writers {
		if w.name == "backup_manifest" {
			s.t.Fatal("second manifest opened")
		}
	}
	if s.fail() {
		return nil, errFuzzSink
	}
	return s.open("backup_manifest"), nil
}

func (s *fuzzSink) open(name string) *fuzzWriter {
	w := &fuzzWriter{sink: s, name: name, index: len(s.writers)}
	s.writers = append(s.writers, w)
	return w
}

type fuzzWriter struct {
	sink  *fuzzSink
	name  string
	index int // in sink.writers
	data  []byte
	ends  int   // CloseWithError calls
	err   error // the first CloseWithError's argument
}

func (w *fuzzWriter) Write(p []byte) (int, error) {
	s := w.sink
	if newest := s.writers[len(s.writers)-1]; w != newest || w.ends > 0 {
		s.t.Fatalf("write to %s (ended %d times) while %s is the newest", w.name, w.ends, newest.name)
	}
	if s.fail() {
		return 0, errFuzzSink
	}
	w.data = append(w.data, p...)
	return len(p), nil
}

func (w *fuzzWriter) CloseWithError(err error) error {
	w.ends++
	if w.ends == 1 {
		w.err = err
	}
	if err == nil && w.sink.fail() {
		w.err, w.sink.closeFailed = errFuzzSink, w.index
		return errFuzzSink
	}
	return nil
}
