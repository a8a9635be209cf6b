package archiver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// bbFakeServer accepts one connection, completes the startup, answers the
// first query with reply and then reads until the client terminates. It
// returns the client's connection and the query it sent.
func bbFakeServer(t *testing.T, reply []pgproto3.BackendMessage) (*pgconn.PgConn, <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	queries := make(chan string, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		be := pgproto3.NewBackend(c, c)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if be.Flush() != nil {
			return
		}
		msg, err := be.Receive()
		if err != nil {
			return
		}
		if q, ok := msg.(*pgproto3.Query); ok {
			queries <- q.String
		}
		for _, m := range reply {
			be.Send(m)
		}
		if be.Flush() != nil {
			return
		}
		// pgconn, closing after an error, drains the connection until
		// the server hangs up after Terminate.
		for {
			msg, err := be.Receive()
			if _, ok := msg.(*pgproto3.Terminate); ok || err != nil {
				return
			}
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	conn, err := pgconn.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d user=walship sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close(context.Background())
		ln.Close()
		<-served
	})
	return conn, queries
}

// Messages of a scripted BASE_BACKUP answer.

func bbPosition(lsn string) []pgproto3.BackendMessage {
	return []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("recptr")}, {Name: []byte("tli")}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte(lsn), []byte("1")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT")},
	}
}

// bbList lists a tablespace 16400 at /ts (unless base only), then the main
// data directory.
func bbList(withTablespace bool) []pgproto3.BackendMessage {
	m := []pgproto3.BackendMessage{&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("spcoid")}, {Name: []byte("spclocation")}, {Name: []byte("size")}}}}
	if withTablespace {
		m = append(m, &pgproto3.DataRow{Values: [][]byte{[]byte("16400"), []byte("/ts"), nil}})
	}
	return append(m, &pgproto3.DataRow{Values: [][]byte{nil, nil, nil}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT")})
}

func bbCopyData(tag byte, b ...string) *pgproto3.CopyData {
	return &pgproto3.CopyData{Data: append([]byte{tag}, strings.Join(b, "")...)}
}

func bbNew(name, location string) *pgproto3.CopyData {
	return bbCopyData('n', name, "\x00", location, "\x00")
}

var (
	bbCopyOut = &pgproto3.CopyOutResponse{}
	bbDone    = &pgproto3.CopyDone{}
	bbEnd     = []pgproto3.BackendMessage{
		&pgproto3.CommandComplete{CommandTag: []byte("BASE_BACKUP")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	}
)

func bbScript(parts ...any) []pgproto3.BackendMessage {
	var out []pgproto3.BackendMessage
	for _, p := range parts {
		switch p := p.(type) {
		case pgproto3.BackendMessage:
			out = append(out, p)
		case []pgproto3.BackendMessage:
			out = append(out, p...)
		default:
			panic(fmt.Sprintf("bbScript: %T", p))
		}
	}
	return out
}

// bbStream15 is a good PostgreSQL 15+ answer with a tablespace.
func bbStream15() []pgproto3.BackendMessage {
	return bbScript(bbPosition("0/2000028"), bbList(true), bbCopyOut,
		bbNew("16400.tar", "/ts"), bbCopyData('d', "tablespace"), bbCopyData('p', "\x00\x00\x00\x00\x00\x00\x00\x0a"),
		bbNew("base.tar", ""), bbCopyData('d', "ba"), bbCopyData('d', "se"), bbCopyData('p', "\x00\x00\x00\x00\x00\x00\x00\x0e"),
		bbCopyData('m'), bbCopyData('d', `{"manifest": 1}`), bbDone,
		bbPosition("0/2000100"), bbEnd)
}

func TestBaseBackupSQL(t *testing.T) {
	for _, tc := range []struct {
		version int
		opts    BaseBackupOptions
		want    string
	}{
		{140013, BaseBackupOptions{Label: "it's"},
			`BASE_BACKUP LABEL 'it''s' NOWAIT TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'`},
		{140013, BaseBackupOptions{Label: `a\b`, Fast: true, MaxRate: 32},
			`BASE_BACKUP LABEL 'a\b' FAST NOWAIT MAX_RATE 32 TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'`},
		{150000, BaseBackupOptions{Label: "x"},
			`BASE_BACKUP (LABEL 'x', WAIT false, TABLESPACE_MAP, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')`},
		{180003, BaseBackupOptions{Label: "''", Fast: true, MaxRate: 1048576},
			`BASE_BACKUP (LABEL '''''', CHECKPOINT 'fast', WAIT false, MAX_RATE 1048576, TABLESPACE_MAP, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')`},
	} {
		got, err := baseBackupSQL(tc.version, tc.opts)
		if err != nil || got != tc.want {
			t.Errorf("%d %+v:\n got %s, %v\nwant %s", tc.version, tc.opts, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		version int
		opts    BaseBackupOptions
		want    string
	}{
		{130000, BaseBackupOptions{Label: "x"}, "PostgreSQL 14 and later"},
		{150000, BaseBackupOptions{}, "label is required"},
		{150000, BaseBackupOptions{Label: "a\nb"}, "one line"},
		{150000, BaseBackupOptions{Label: "a\x00b"}, "one line"},
		{150000, BaseBackupOptions{Label: "x", MaxRate: 31}, "32 to 1048576"},
		{150000, BaseBackupOptions{Label: "x", MaxRate: 1048577}, "32 to 1048576"},
		{150000, BaseBackupOptions{Label: "x", MaxRate: -1}, "32 to 1048576"},
	} {
		if _, err := baseBackupSQL(tc.version, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%d %+v: %v, want an error saying %q", tc.version, tc.opts, err, tc.want)
		}
	}
}

func TestBaseBackupProtocol(t *testing.T) {
	ctx := context.Background()
	wantFiles := func(t *testing.T, sink *bbSink, want map[string]string) {
		t.Helper()
		for name, content := range want {
			b, err := os.ReadFile(filepath.Join(sink.dir, name))
			if err != nil || string(b) != content {
				t.Errorf("%s: %q, %v; want %q", name, b, err, content)
			}
		}
		wantOutcomes := map[string]string{}
		for name := range want {
			wantOutcomes[name] = "closed"
		}
		if got := sink.outcomes(); fmt.Sprint(got) != fmt.Sprint(wantOutcomes) {
			t.Errorf("writers ended %v, want %v", got, wantOutcomes)
		}
	}

	t.Run("pg15", func(t *testing.T) {
		conn, queries := bbFakeServer(t, bbStream15())
		sink := newBBSink(t)
		res, err := StreamBaseBackup(ctx, conn, 150000, BaseBackupOptions{Label: "x"}, sink)
		if err != nil {
			t.Fatal(err)
		}
		if q := <-queries; !strings.HasPrefix(q, "BASE_BACKUP (LABEL 'x'") {
			t.Errorf("query %s", q)
		}
		want := BaseBackupResult{StartLSN: 0x2000028, StartTLI: 1, EndLSN: 0x2000100, EndTLI: 1,
			Archives: []BackupArchive{{Name: "16400.tar", OID: 16400, Location: "/ts"}, {Name: "base.tar"}}}
		if fmt.Sprint(res) != fmt.Sprint(want) {
			t.Errorf("result %+v, want %+v", res, want)
		}
		wantFiles(t, sink, map[string]string{"16400.tar": "tablespace", "base.tar": "base", "backup_manifest": `{"manifest": 1}`})
	})

	t.Run("pg14", func(t *testing.T) {
		end := string(make([]byte, 1024))
		conn, _ := bbFakeServer(t, bbScript(bbPosition("0/2000028"), bbList(true),
			bbCopyOut, &pgproto3.CopyData{Data: []byte("tablespace")}, bbDone,
			bbCopyOut, &pgproto3.CopyData{Data: []byte("ba")}, &pgproto3.CopyData{Data: []byte("se")}, bbDone,
			bbCopyOut, &pgproto3.CopyData{Data: []byte("{}")}, bbDone,
			bbPosition("0/2000100"), bbEnd))
		sink := newBBSink(t)
		res, err := StreamBaseBackup(ctx, conn, 140013, BaseBackupOptions{Label: "x"}, sink)
		if err != nil {
			t.Fatal(err)
		}
		if want := "[{16400.tar 16400 /ts} {base.tar 0 }]"; fmt.Sprint(res.Archives) != want {
			t.Errorf("archives %v, want %s", res.Archives, want)
		}
		wantFiles(t, sink, map[string]string{"16400.tar": "tablespace" + end, "base.tar": "base" + end, "backup_manifest": "{}"})
	})

	// Each failure aborts every writer, and the error says what happened.
	failures := []struct {
		name    string
		version int
		reply   []pgproto3.BackendMessage
		want    string
	}{
		{"data before a name", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbCopyData('d', "x")),
			"before naming its archive"},
		{"name with a slash", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("../base.tar", "")),
			`invalid archive name "../base.tar"`},
		{"hidden name", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew(".tar", "")),
			"invalid archive name"},
		{"empty name", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("", "")),
			"invalid archive name"},
		{"long name", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew(strings.Repeat("a", 2000), "")),
			"malformed new-archive message"},
		{"unterminated name", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbCopyData('n', "base.tar")),
			"malformed new-archive message"},
		{"compressed archive", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar.gz", "")),
			"uncompressed archives"},
		{"unlisted tablespace", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("16400.tar", "/ts")),
			"did not list"},
		{"archive twice", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""), bbNew("base.tar", "")),
			"twice"},
		{"unknown message", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""), bbCopyData('x')),
			"unknown type 'x'"},
		{"archive after the manifest", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""),
			bbCopyData('m'), bbNew("base.tar", "")), "after the manifest"},
		{"no manifest", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""), bbDone,
			bbPosition("0/2")), "without sending a manifest"},
		{"missing archive", 150000, bbScript(bbPosition("0/1"), bbList(true), bbCopyOut, bbNew("base.tar", ""), bbCopyData('m'), bbDone,
			bbPosition("0/2")), "listed 2 tablespaces (the main data directory included) but sent 1 archives"},
		{"no end position", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""), bbCopyData('m'), bbDone,
			bbEnd), "without reporting where the backup ends"},
		{"two base rows", 150000, bbScript(bbPosition("0/1"), bbList(false)[:2], &pgproto3.DataRow{Values: [][]byte{nil, nil, nil}}, bbCopyOut),
			"2 main data directories"},
		{"bad OID", 150000, bbScript(bbPosition("0/1"), &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte("spcoid")}, {Name: []byte("spclocation")}, {Name: []byte("size")}}},
			&pgproto3.DataRow{Values: [][]byte{[]byte("016400"), []byte("/ts"), nil}}), "tablespace OID"},
		{"bad position", 150000, bbScript(bbPosition("nowhere")), `backup position "nowhere"`},
		{"server error", 150000, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""), bbCopyData('d', "x"),
			&pgproto3.ErrorResponse{Severity: "ERROR", Code: "58P01", Message: "could not open file"}), "could not open file"},
		{"checksum failure", 150000, bbScript(bbStream15()[:len(bbStream15())-2],
			&pgproto3.ErrorResponse{Severity: "ERROR", Code: "XX001", Message: "checksum verification failure during base backup"}),
			"checksum failures were found in the data files"},
		{"pg14 extra COPY", 140013, bbScript(bbPosition("0/1"), bbList(false),
			bbCopyOut, bbDone, bbCopyOut, bbDone, bbCopyOut), "after the manifest"},
	}
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			conn, _ := bbFakeServer(t, tc.reply)
			sink := newBBSink(t)
			_, err := StreamBaseBackup(ctx, conn, tc.version, BaseBackupOptions{Label: "x"}, sink)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
			for _, w := range sink.writers {
				if w.ends != 1 || w.closed || w.err == nil {
					t.Errorf("%s: ended %d times, closed well %v, with %v; want aborted", w.name, w.ends, w.closed, w.err)
				}
			}
		})
	}

	t.Run("too many tablespaces", func(t *testing.T) {
		reply := bbScript(bbPosition("0/1"), bbList(false)[:1])
		for i := range maxBackupTablespaces + 1 {
			reply = append(reply, &pgproto3.DataRow{Values: [][]byte{fmt.Appendf(nil, "%d", 16384+i), []byte("/ts"), nil}})
		}
		conn, _ := bbFakeServer(t, reply)
		_, err := StreamBaseBackup(ctx, conn, 150000, BaseBackupOptions{Label: "x"}, newBBSink(t))
		if err == nil || !strings.Contains(err.Error(), "more than") {
			t.Fatalf("got %v, want an error about too many tablespaces", err)
		}
	})

	t.Run("oversized message", func(t *testing.T) {
		conn, _ := bbFakeServer(t, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""),
			bbCopyData('d', strings.Repeat("x", maxBackupMessage+1))))
		sink := newBBSink(t)
		_, err := StreamBaseBackup(ctx, conn, 150000, BaseBackupOptions{Label: "x"}, sink)
		var tooLong *pgproto3.ExceededMaxBodyLenErr
		if !errors.As(err, &tooLong) {
			t.Fatalf("got %v, want %T", err, tooLong)
		}
		sink.wantAllAborted(tooLong)
	})

	t.Run("cancelled", func(t *testing.T) {
		// The server stalls mid-archive.
		conn, _ := bbFakeServer(t, bbScript(bbPosition("0/1"), bbList(false), bbCopyOut, bbNew("base.tar", ""), bbCopyData('d', "x")))
		sink := newBBSink(t)
		ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := StreamBaseBackup(ctx, conn, 150000, BaseBackupOptions{Label: "x"}, sink)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want %v", err, context.DeadlineExceeded)
		}
		sink.wantAllAborted(context.DeadlineExceeded)
	})

	t.Run("open fails", func(t *testing.T) {
		conn, _ := bbFakeServer(t, bbStream15())
		sink := &bbNoManifestSink{newBBSink(t)}
		_, err := StreamBaseBackup(ctx, conn, 150000, BaseBackupOptions{Label: "x"}, sink)
		if !errors.Is(err, errBBSinkFull) || !strings.Contains(err.Error(), "open the manifest") {
			t.Fatalf("got %v, want %v opening the manifest", err, errBBSinkFull)
		}
		sink.wantAllAborted(errBBSinkFull)
	})

	t.Run("close fails", func(t *testing.T) {
		conn, _ := bbFakeServer(t, bbStream15())
		sink := &bbCloseFailSink{bbSink: newBBSink(t), fail: "base.tar"}
		_, err := StreamBaseBackup(ctx, conn, 150000, BaseBackupOptions{Label: "x"}, sink)
		if !errors.Is(err, errBBClose) {
			t.Fatalf("got %v, want %v", err, errBBClose)
		}
		// The tablespace was closed first, well; what follows base.tar is
		// aborted.
		want := map[string]string{"16400.tar": "closed", "base.tar": "aborted", "backup_manifest": "aborted"}
		if got := sink.outcomes(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("writers ended %v, want %v", got, want)
		}
	})
}

// bbNoManifestSink cannot store a manifest.
type bbNoManifestSink struct{ *bbSink }

func (bbNoManifestSink) Manifest(context.Context) (BackupWriter, error) { return nil, errBBSinkFull }

var errBBClose = errors.New("test sink: close failed")

// bbCloseFailSink's writer named fail fails to close well.
type bbCloseFailSink struct {
	*bbSink
	fail string
}

func (s *bbCloseFailSink) Archive(ctx context.Context, a BackupArchive) (BackupWriter, error) {
	w, err := s.bbSink.Archive(ctx, a)
	if err != nil || a.Name != s.fail {
		return w, err
	}
	return bbCloseFail{w}, nil
}

type bbCloseFail struct{ BackupWriter }

func (w bbCloseFail) CloseWithError(err error) error {
	if err == nil {
		_ = w.BackupWriter.CloseWithError(errBBClose)
		return errBBClose
	}
	return w.BackupWriter.CloseWithError(err)
}
