package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/file"
)

const testSegSize = 1 << 20

// testSegment builds a 1 MB segment of a PostgreSQL 15 cluster: page
// headers with their addresses, pseudo-random records from seed.
func testSegment(seg wal.Segment, seed uint64) []byte {
	const page = 8192
	b := make([]byte, testSegSize)
	rng := rand.New(rand.NewPCG(seed, 3))
	for p := 0; p < testSegSize/page; p++ {
		pg := b[p*page : (p+1)*page]
		binary.LittleEndian.PutUint16(pg, 0xD110)
		binary.LittleEndian.PutUint32(pg[4:], uint32(seg.TLI))
		binary.LittleEndian.PutUint64(pg[8:], uint64(seg.Start(testSegSize))+uint64(p*page))
		body := pg[24:]
		if p == 0 {
			binary.LittleEndian.PutUint16(pg[2:], 2) // XLP_LONG_HEADER
			binary.LittleEndian.PutUint64(pg[24:], 7441337033001234567)
			binary.LittleEndian.PutUint32(pg[32:], testSegSize)
			binary.LittleEndian.PutUint32(pg[36:], page)
			body = pg[40:]
		}
		for i := range body {
			body[i] = byte(rng.Uint32())
		}
	}
	return b
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWALPushFetch(t *testing.T) {
	repoDir := filepath.Join(t.TempDir(), "repo")
	repo := "file://" + repoDir
	seg := wal.Segment{TLI: 1, No: 5}
	name := seg.Name(testSegSize)
	data := testSegment(seg, 1)
	src, dst := t.TempDir(), t.TempDir()
	path := writeFile(t, src, name, data)

	type run struct {
		what string
		args []string
		env  map[string]string
		code int
		says string
	}
	check := func(t *testing.T, runs []run) {
		t.Helper()
		for _, r := range runs {
			code, _, errOut := walship(t, r.env, r.args...)
			if code != r.code || !strings.Contains(errOut, r.says) {
				t.Errorf("%s: walship %q: exit %d, stderr %q; want exit %d saying %q", r.what, r.args, code, errOut, r.code, r.says)
			}
		}
	}
	check(t, []run{
		{"push", []string{"--repo", repo, "wal-push", path}, nil, exitOK, "msg=archived"},
		{"push again", []string{"--repo", repo, "wal-push", path}, nil, exitOK, "already archived with the same content"},
		{"push other WAL under the name", []string{"--repo", repo, "wal-push", writeFile(t, t.TempDir(), name, testSegment(seg, 2))}, nil, exitFailed, "already holds different WAL"},
		{"push garbage", []string{"--repo", repo, "wal-push", writeFile(t, src, "000000010000000000000006", make([]byte, testSegSize))}, nil, exitFailed, "not a WAL segment"},
		{"push a missing file", []string{"--repo", repo, "wal-push", filepath.Join(src, "000000010000000000000007")}, nil, exitFailed, "no such file"},
		{"push without a path", []string{"--repo", repo, "wal-push"}, nil, exitUsage, "wal-push takes one argument"},
		{"push without a repository", []string{"wal-push", path}, nil, exitUsage, "no repository"},
		{"push with a bad compression", []string{"--repo", repo, "wal-push", "--compression", "lz4", path}, nil, exitUsage, "--compression"},
		{"push with an unknown flag", []string{"--repo", repo, "wal-push", "--frob", path}, nil, exitUsage, "flag provided but not defined"},

		{"fetch", []string{"--repo", repo, "wal-fetch", name, filepath.Join(dst, "RECOVERYXLOG")}, nil, exitOK, "msg=fetched"},
		{"fetch a missing segment", []string{"--repo", repo, "wal-fetch", "000000010000000000000009", filepath.Join(dst, "x")}, nil, exitNotFound, "not in the repository"},
		{"fetch a missing history", []string{"--repo", repo, "wal-fetch", "00000002.history", filepath.Join(dst, "x")}, nil, exitNotFound, "not in the repository"},
		{"fetch a bad name", []string{"--repo", repo, "wal-fetch", "pg_control", filepath.Join(dst, "x")}, nil, exitStopRecovery, "file name"},
		{"fetch from a store without walship.json", []string{"--repo", "file://" + t.TempDir(), "wal-fetch", name, filepath.Join(dst, "x")}, nil, exitStopRecovery, "no walship.json"},
		{"fetch without a repository", []string{"wal-fetch", name, filepath.Join(dst, "x")}, nil, exitStopRecovery, "no repository"},
		{"fetch with a bad repository", []string{"--repo", "s3://Bad", "wal-fetch", name, filepath.Join(dst, "x")}, nil, exitStopRecovery, `bucket "Bad"`},
		{"fetch with one argument", []string{"--repo", repo, "wal-fetch", name}, nil, exitStopRecovery, "wal-fetch takes two arguments"},
		{"fetch with an unknown flag", []string{"--repo", repo, "wal-fetch", "--frob", name, filepath.Join(dst, "x")}, nil, exitStopRecovery, "flag provided but not defined"},
		{"fetch with a bad global flag", []string{"--log-format", "xml", "--repo", repo, "wal-fetch", name, filepath.Join(dst, "x")}, nil, exitStopRecovery, "--log-format"},
		{"fetch with a bad global flag after =", []string{"--log-level=loud", "wal-fetch", name, filepath.Join(dst, "x")}, nil, exitStopRecovery, "--log-level"},
		{"fetch with an unknown global flag", []string{"--frob", "wal-fetch", name, filepath.Join(dst, "x")}, nil, exitStopRecovery, "flag provided but not defined"},
	})
	t.Run("bad variable", func(t *testing.T) {
		check(t, []run{{"fetch with a bad variable", []string{"--repo", repo, "wal-fetch", name, filepath.Join(dst, "x")},
			map[string]string{"WALSHIP_LOG_FORMAT": "xml"}, exitStopRecovery, "--log-format"}})
	})
	if got, err := os.ReadFile(filepath.Join(dst, "RECOVERYXLOG")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("fetched segment: %d bytes, %v", len(got), err)
	}

	// A damaged object stops recovery, naming the key, and leaves no DEST.
	s, err := file.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	key := catalog.SegmentKey(seg, testSegSize)
	flip(t, s, key)
	code, _, errOut := walship(t, nil, "--repo", repo, "wal-fetch", name, filepath.Join(dst, "damaged"))
	if code != exitStopRecovery || !strings.Contains(errOut, key) || !strings.Contains(errOut, "corrupt") {
		t.Errorf("fetch of a damaged segment: exit %d, stderr %q", code, errOut)
	}
	entries, _ := os.ReadDir(dst)
	if len(entries) != 1 {
		t.Errorf("destination directory holds %d files, want only RECOVERYXLOG", len(entries))
	}
}

func flip(t *testing.T, s *file.Store, key string) {
	t.Helper()
	ctx := context.Background()
	rc, err := s.Get(ctx, key, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := s.Put(ctx, key, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
}

// TestWALEncrypted round-trips a segment through an encrypted repository
// and checks that no key material is ever printed.
func TestWALEncrypted(t *testing.T) {
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	ids := make([]*age.X25519Identity, 2)
	for i := range ids {
		var err error
		if ids[i], err = age.GenerateX25519Identity(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	idFile := writeFile(t, dir, "key.txt", []byte("# created: today\n# public key: "+ids[1].Recipient().String()+"\n"+ids[1].String()+"\n"))
	seg := wal.Segment{TLI: 1, No: 3}
	data := testSegment(seg, 7)
	path := writeFile(t, dir, seg.Name(testSegSize), data)
	recipients := ids[0].Recipient().String() + "," + ids[1].Recipient().String()
	badLine := strings.Replace(ids[0].String(), "AGE-SECRET-KEY-1", "AGE-SECRET-KEY-9", 1)
	secrets := []string{ids[0].String(), ids[1].String(), badLine[20:]}

	check := func(what string, env map[string]string, wantCode int, want string, args ...string) {
		t.Helper()
		code, out, errOut := walship(t, env, args...)
		if code != wantCode || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d saying %q", what, code, errOut, wantCode, want)
		}
		for _, s := range secrets {
			if strings.Contains(out+errOut, s) {
				t.Errorf("%s printed key material: %q", what, out+errOut)
			}
		}
	}
	check("push to two recipients", map[string]string{"WALSHIP_AGE_RECIPIENTS": recipients}, exitOK, "archived",
		"--repo", repo, "wal-push", path)
	check("push again, comparing with the identity", map[string]string{"WALSHIP_AGE_RECIPIENTS": recipients}, exitOK, "same content",
		"--repo", repo, "wal-push", "--age-identity-file", idFile, path)
	check("push again without an identity", nil, exitFailed, "age",
		"--repo", repo, "wal-push", "--age-recipient", ids[0].Recipient().String(), path)
	dest := filepath.Join(dir, "RECOVERYXLOG")
	check("fetch without an identity", nil, exitStopRecovery, "encrypted",
		"--repo", repo, "wal-fetch", seg.Name(testSegSize), dest)
	check("fetch with the second identity", map[string]string{"WALSHIP_AGE_IDENTITY_FILE": idFile}, exitOK, "fetched",
		"--repo", repo, "wal-fetch", seg.Name(testSegSize), dest)
	if got, err := os.ReadFile(dest); err != nil || !bytes.Equal(got, data) {
		t.Errorf("fetched %d bytes, %v", len(got), err)
	}

	bad := writeFile(t, dir, "bad.txt", []byte("# comment\n"+badLine+"\n"))
	check("bad identity file", nil, exitUsage, "line 2 is not an age identity",
		"--repo", repo, "wal-push", "--age-identity-file", bad, path)
	check("empty identity file", nil, exitUsage, "no identity in it",
		"--repo", repo, "wal-push", "--age-identity-file", writeFile(t, dir, "empty.txt", []byte("# nothing\n")), path)
	check("missing identity file", nil, exitStopRecovery, "no such file",
		"--repo", repo, "wal-fetch", "--age-identity-file", filepath.Join(dir, "nope"), seg.Name(testSegSize), dest)
	check("bad recipient", nil, exitUsage, "not an age X25519 public key",
		"--repo", repo, "wal-push", "--age-recipient", "age1nope", path)
}

func TestCommandName(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"walship", "wal-fetch", "a", "b"}, "wal-fetch"},
		{[]string{"walship", "--repo", "file:///x", "wal-fetch", "a", "b"}, "wal-fetch"},
		{[]string{"walship", "--repo=file:///x", "--log-level", "debug", "wal-fetch"}, "wal-fetch"},
		{[]string{"walship", "--repo", "wal-fetch", "wal-push", "a"}, "wal-push"},
		{[]string{"walship", "--version", "wal-fetch"}, "wal-fetch"},
		{[]string{"walship", "--", "wal-fetch"}, "wal-fetch"},
		{[]string{"walship", "--repo"}, ""},
		{[]string{"walship"}, ""},
	} {
		if got := commandName(c.args); got != c.want {
			t.Errorf("commandName(%q) = %q, want %q", c.args, got, c.want)
		}
	}
}
