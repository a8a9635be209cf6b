package archiver

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/internal/pgtest"
)

// bbSink writes each stream of a base backup to a file in dir, removing it
// when the stream is aborted, and records how every writer ended. With
// failAfter > 0, a Write fails once the streams together would pass that
// many bytes.
type bbSink struct {
	t         *testing.T
	dir       string
	failAfter int64

	written  int64
	writers  []*bbWriter // in the order opened
	newest   *bbWriter
	archives []BackupArchive
}

var errBBSinkFull = errors.New("test sink: disk full")

func newBBSink(t *testing.T) *bbSink { return &bbSink{t: t, dir: t.TempDir()} }

func (s *bbSink) Archive(_ context.Context, a BackupArchive) (BackupWriter, error) {
	s.archives = append(s.archives, a)
	return s.create(a.Name)
}

func (s *bbSink) Manifest(context.Context) (BackupWriter, error) { return s.create("backup_manifest") }

func (s *bbSink) create(name string) (BackupWriter, error) {
	f, err := os.Create(filepath.Join(s.dir, name))
	if err != nil {
		return nil, err
	}
	w := &bbWriter{sink: s, name: name, f: f}
	s.writers = append(s.writers, w)
	s.newest = w
	return w, nil
}

type bbWriter struct {
	sink   *bbSink
	name   string
	f      *os.File
	ends   int   // CloseWithError calls
	err    error // the first CloseWithError's argument
	closed bool  // ended well
}

func (w *bbWriter) Write(p []byte) (int, error) {
	s := w.sink
	if w != s.newest {
		s.t.Errorf("write to %s after %s was opened", w.name, s.newest.name)
	}
	if w.ends > 0 {
		s.t.Errorf("write to %s after CloseWithError", w.name)
	}
	if s.failAfter > 0 && s.written+int64(len(p)) > s.failAfter {
		return 0, errBBSinkFull
	}
	n, err := w.f.Write(p)
	s.written += int64(n)
	return n, err
}

func (w *bbWriter) CloseWithError(err error) error {
	w.ends++
	if w.ends > 1 {
		w.sink.t.Errorf("%s: CloseWithError called %d times", w.name, w.ends)
		return nil
	}
	w.err = err
	cerr := w.f.Close()
	if err != nil {
		return errors.Join(cerr, os.Remove(w.f.Name()))
	}
	w.closed = cerr == nil
	return cerr
}

// outcomes says how each writer ended: "closed", "aborted" or "open".
func (s *bbSink) outcomes() map[string]string {
	m := map[string]string{}
	for _, w := range s.writers {
		switch {
		case w.ends == 0:
			m[w.name] = "open"
		case w.closed:
			m[w.name] = "closed"
		default:
			m[w.name] = "aborted"
		}
	}
	return m
}

// wantAllAborted checks that every writer was aborted with an error matching
// want and that no file is left.
func (s *bbSink) wantAllAborted(want error) {
	s.t.Helper()
	if len(s.writers) == 0 {
		s.t.Error("no writer was opened")
	}
	for _, w := range s.writers {
		if w.ends != 1 || w.closed || !errors.Is(w.err, want) {
			s.t.Errorf("%s: ended %d times, closed well %v, with %v; want aborted once with %v", w.name, w.ends, w.closed, w.err, want)
		}
	}
	if left, _ := os.ReadDir(s.dir); len(left) != 0 {
		s.t.Errorf("aborted streams left %d files, %s first", len(left), left[0].Name())
	}
}

// bbConnect opens a replication connection to c, closed when the test ends.
func bbConnect(t *testing.T, c *pgtest.Cluster) (*pgconn.PgConn, Server) {
	t.Helper()
	ctx := context.Background()
	conn, err := connect(ctx, c.ConnString(), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	srv, err := identify(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	return conn, srv
}

// bbManifest is what the tests read of a backup_manifest.
type bbManifest struct {
	Version *int `json:"PostgreSQL-Backup-Manifest-Version"`
	Files   []struct {
		Path        string `json:"Path"`
		EncodedPath string `json:"Encoded-Path"`
		Size        int64  `json:"Size"`
		Algorithm   string `json:"Checksum-Algorithm"`
		Checksum    string `json:"Checksum"`
	} `json:"Files"`
}

// bbFile is one extracted file.
type bbFile struct {
	size int64
	disk string // where it was extracted
}

// bbExtract extracts a tar archive into dir and returns its regular files,
// keyed by prefix plus their path in the archive.
func bbExtract(t *testing.T, archive, dir, prefix string, files map[string]bbFile) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", archive, err)
		}
		name := path.Clean(h.Name)
		if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			t.Fatalf("%s: member %q escapes the archive", archive, h.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
				t.Fatal(err)
			}
			out, err := os.Create(target)
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatalf("%s: extract %s: %v", archive, name, err)
			}
			files[prefix+name] = bbFile{size: n, disk: target}
		default:
			t.Errorf("%s: member %q of type %q; TABLESPACE_MAP should leave no links", archive, h.Name, h.Typeflag)
		}
	}
}

// bbCRC32C renders a file's CRC-32C as the manifest does: the bytes of the
// value in the server's (little-endian) order, in hex.
func bbCRC32C(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v [4]byte
	binary.LittleEndian.PutUint32(v[:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	return hex.EncodeToString(v[:])
}

func TestBaseBackup(t *testing.T) {
	for _, v := range pgtest.Versions() {
		t.Run(fmt.Sprintf("pg%d", v), func(t *testing.T) {
			t.Parallel()
			// One version without a tablespace keeps that case covered.
			testBaseBackup(t, v, v != 16)
		})
	}
}

func testBaseBackup(t *testing.T, version int, withTablespace bool) {
	ctx := context.Background()
	var tsDir string
	if withTablespace {
		// Made before the cluster, so that it is removed after the server
		// stops.
		tsDir = pgtest.MkdirOwned(t)
	}
	c := pgtest.Start(t, pgtest.Options{Version: version, Conf: []string{"max_wal_senders = 10"}})
	c.Exec(t, "CREATE TABLE bb (id int PRIMARY KEY, v text); INSERT INTO bb SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 5000) g")
	relFiles := []string{c.Scalar(t, "SELECT pg_relation_filepath('bb')")}
	tsOID := ""
	if withTablespace {
		c.Exec(t, fmt.Sprintf("CREATE TABLESPACE bbts LOCATION '%s'", tsDir))
		c.Exec(t, "CREATE TABLE bbt (id int, v text) TABLESPACE bbts; INSERT INTO bbt SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
		tsOID = c.Scalar(t, "SELECT oid FROM pg_tablespace WHERE spcname = 'bbts'")
		relFiles = append(relFiles, c.Scalar(t, "SELECT pg_relation_filepath('bbt')"))
	}

	conn, srv := bbConnect(t, c)
	sink := newBBSink(t)
	label := "walship test 'quoted'"
	began := time.Now()
	res, err := StreamBaseBackup(ctx, conn, srv.VersionNum, BaseBackupOptions{Label: label, Fast: true, Log: testLogger(t)}, sink)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL %d: base backup %v..%v in %v: archives %v", version, res.StartLSN, res.EndLSN, time.Since(began).Round(time.Millisecond), res.Archives)

	// The result.
	if res.StartLSN == 0 || res.StartLSN > res.EndLSN || res.StartTLI != 1 || res.EndTLI != 1 {
		t.Errorf("start %v on %d, end %v on %d; want 0 < start <= end, timeline 1", res.StartLSN, res.StartTLI, res.EndLSN, res.EndTLI)
	}
	want := []BackupArchive{{Name: "base.tar"}}
	if withTablespace {
		oid, err := parseBackupOID([]byte(tsOID))
		if err != nil {
			t.Fatal(err)
		}
		// Tablespaces come first, the main data directory last.
		want = []BackupArchive{{Name: tsOID + ".tar", OID: oid, Location: tsDir}, {Name: "base.tar"}}
	}
	if fmt.Sprint(res.Archives) != fmt.Sprint(want) || fmt.Sprint(sink.archives) != fmt.Sprint(want) {
		t.Errorf("archives %v, sink got %v; want %v", res.Archives, sink.archives, want)
	}
	wantOutcomes := map[string]string{"backup_manifest": "closed"}
	for _, a := range want {
		wantOutcomes[a.Name] = "closed"
	}
	if got := sink.outcomes(); fmt.Sprint(got) != fmt.Sprint(wantOutcomes) {
		t.Errorf("writers ended %v, want %v", got, wantOutcomes)
	}

	// Every archive is a complete tar: it ends with two zero blocks, which
	// on PostgreSQL 14 walship adds.
	for _, a := range want {
		b, err := os.ReadFile(filepath.Join(sink.dir, a.Name))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 2048 || len(b)%512 != 0 || !bytes.Equal(b[len(b)-1024:], make([]byte, 1024)) {
			t.Errorf("%s: %d bytes, not ending in two zero blocks", a.Name, len(b))
		}
	}

	// Extract: base.tar into base, the tablespace into a directory of its
	// own, named in the manifest's terms.
	base := filepath.Join(t.TempDir(), "base")
	files := map[string]bbFile{}
	bbExtract(t, filepath.Join(sink.dir, "base.tar"), base, "", files)
	tsExtract := ""
	if withTablespace {
		tsExtract = filepath.Join(t.TempDir(), tsOID)
		bbExtract(t, filepath.Join(sink.dir, tsOID+".tar"), tsExtract, "pg_tblspc/"+tsOID+"/", files)
	}

	// The manifest lists exactly the extracted files, with their sizes
	// and CRC-32C checksums.
	raw, err := os.ReadFile(filepath.Join(sink.dir, "backup_manifest"))
	if err != nil {
		t.Fatal(err)
	}
	var m bbManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("backup_manifest: %v", err)
	}
	if m.Version == nil {
		t.Fatalf("backup_manifest has no PostgreSQL-Backup-Manifest-Version: %.200s", raw)
	}
	listed := map[string]bool{}
	for _, f := range m.Files {
		p := f.Path
		if f.EncodedPath != "" {
			b, err := hex.DecodeString(f.EncodedPath)
			if err != nil {
				t.Fatal(err)
			}
			p = string(b)
		}
		listed[p] = true
		got, ok := files[p]
		switch {
		case !ok:
			t.Errorf("manifest lists %s, which is not in the archives", p)
		case got.size != f.Size:
			t.Errorf("%s: %d bytes, manifest says %d", p, got.size, f.Size)
		case f.Algorithm != "CRC32C":
			t.Errorf("%s: checksum algorithm %q, want CRC32C", p, f.Algorithm)
		case bbCRC32C(t, got.disk) != f.Checksum:
			t.Errorf("%s: CRC-32C %s, manifest says %s", p, bbCRC32C(t, got.disk), f.Checksum)
		}
	}
	for p := range files {
		if !listed[p] {
			t.Errorf("%s is in the archives but not in the manifest", p)
		}
	}
	t.Logf("manifest version %d lists %d files", *m.Version, len(m.Files))
	for _, rel := range relFiles {
		if files[rel].size == 0 {
			t.Errorf("the table's relation file %s is missing or empty", rel)
		}
	}

	// backup_label and tablespace_map.
	bl, err := os.ReadFile(filepath.Join(base, "backup_label"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"LABEL: " + label + "\n", "START WAL LOCATION: " + res.StartLSN.String() + " "} {
		if !strings.Contains(string(bl), line) {
			t.Errorf("backup_label lacks %q:\n%s", line, bl)
		}
	}
	tm, err := os.ReadFile(filepath.Join(base, "tablespace_map"))
	if err != nil {
		t.Fatal(err)
	}
	if wantMap := tsOID + " " + tsDir + "\n"; withTablespace && string(tm) != wantMap {
		t.Errorf("tablespace_map is %q, want %q", tm, wantMap)
	}

	if version <= 16 {
		// pg_verifybackup 15 reads version 1 manifests (PostgreSQL 13 to
		// 16). It finds tablespaces under pg_tblspc/<oid>, where a link to
		// the extracted tablespace stands in for what a restore makes.
		if withTablespace {
			if err := os.Symlink(tsExtract, filepath.Join(base, "pg_tblspc", tsOID)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(base, "backup_manifest"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		verify, err := pgtest.ClientBin("pg_verifybackup")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(verify, "-n", base).CombinedOutput()
		if err != nil {
			t.Errorf("pg_verifybackup -n: %v\n%s", err, out)
		} else {
			t.Logf("pg_verifybackup: %s", bytes.TrimSpace(out))
		}
	}

	// The connection is idle again: a second backup on it fails midway in
	// the sink, and every writer is aborted.
	failing := newBBSink(t)
	failing.failAfter = 200 << 10
	_, err = StreamBaseBackup(ctx, conn, srv.VersionNum, BaseBackupOptions{Label: "fails"}, failing)
	if !errors.Is(err, errBBSinkFull) {
		t.Fatalf("backup into a failing sink: %v, want %v", err, errBBSinkFull)
	}
	t.Logf("failing sink: %v", err)
	failing.wantAllAborted(errBBSinkFull)
}

// TestBaseBackupChecksumFailure corrupts a heap page and checks that the
// backup fails with an error naming the checksum failure, every writer
// aborted, although the server reports it only after all data.
func TestBaseBackupChecksumFailure(t *testing.T) {
	for _, v := range []int{14, 18} {
		t.Run(fmt.Sprintf("pg%d", v), func(t *testing.T) {
			t.Parallel()
			c := pgtest.Start(t, pgtest.Options{Version: v, Conf: []string{"max_wal_senders = 10"}})
			if got := c.Scalar(t, "SHOW data_checksums"); got != "on" {
				t.Fatalf("data_checksums is %s, want on", got)
			}
			c.Exec(t, "CREATE TABLE bbc (id int, v text); INSERT INTO bbc SELECT g, md5(g::text) FROM generate_series(1, 2000) g; CHECKPOINT")
			rel := filepath.Join(c.DataDir(), c.Scalar(t, "SELECT pg_relation_filepath('bbc')"))
			c.Stop(t)
			f, err := os.OpenFile(rel, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			const at = 8192 + 4096 // the middle of the second page, among tuples
			if _, err := f.ReadAt(b, at); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0xff
			if _, err := f.WriteAt(b, at); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			c.Start(t)

			conn, srv := bbConnect(t, c)
			sink := newBBSink(t)
			_, err = StreamBaseBackup(context.Background(), conn, srv.VersionNum, BaseBackupOptions{Label: "corrupt", Log: testLogger(t)}, sink)
			if !errors.Is(err, ErrChecksumFailure) || !strings.Contains(err.Error(), "checksum") {
				t.Fatalf("backup of a corrupt cluster: %v, want %v", err, ErrChecksumFailure)
			}
			if !strings.Contains(err.Error(), "checksum verification failed in file") {
				t.Errorf("error %v does not quote the server's first warning", err)
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "XX001" {
				t.Errorf("error %v does not hold the server's XX001", err)
			}
			t.Logf("PostgreSQL %d: %v", v, err)
			sink.wantAllAborted(ErrChecksumFailure)
			if _, ok := sink.outcomes()["backup_manifest"]; !ok {
				t.Error("the failure came before the manifest; want it after all data")
			}
		})
	}
}

// bbCountSink counts the bytes of every stream and keeps none.
type bbCountSink struct{ bytes int64 }

func (s *bbCountSink) Archive(context.Context, BackupArchive) (BackupWriter, error) { return s, nil }
func (s *bbCountSink) Manifest(context.Context) (BackupWriter, error)               { return s, nil }
func (s *bbCountSink) Write(p []byte) (int, error)                                  { s.bytes += int64(len(p)); return len(p), nil }
func (s *bbCountSink) CloseWithError(error) error                                   { return nil }

// TestBaseBackupMemory checks that the archives stream through: what the
// backup allocates is small and does not grow with the data.
func TestBaseBackupMemory(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"max_wal_senders = 10"}})
	c.Exec(t, "CREATE TABLE bbm (id int, v text); INSERT INTO bbm SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g")
	conn, srv := bbConnect(t, c)
	sink := &bbCountSink{}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	began := time.Now()
	if _, err := StreamBaseBackup(context.Background(), conn, srv.VersionNum, BaseBackupOptions{Label: "memory", Fast: true}, sink); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d MB in %v (%.0f MB/s), %d kB allocated", sink.bytes>>20, took.Round(time.Millisecond), float64(sink.bytes)/(1<<20)/took.Seconds(), alloc>>10)
	if sink.bytes < 100<<20 {
		t.Fatalf("backup of %d bytes; the test wants more than 100 MB", sink.bytes)
	}
	if alloc > 8<<20 {
		t.Errorf("streaming %d MB allocated %d kB; want it to stream, not buffer", sink.bytes>>20, alloc>>10)
	}
}
