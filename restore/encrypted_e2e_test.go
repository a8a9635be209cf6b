package restore

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
)

// TestEncryptedRepository archives and backs up with only an age
// recipient, so that the archiver holds no key: no object in the repository
// holds a marker row written in plain text, a restore with the identity
// brings the row back, and a restore without it or with another identity
// fails before touching the target, saying what is wrong.
func TestEncryptedRepository(t *testing.T) {
	bin := clitest.Binary(t)
	const marker = "walship-plaintext-marker-7f3c9e"
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	other, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keys := pgtest.MkdirOwned(t)
	idFile, otherFile := filepath.Join(keys, "id.txt"), filepath.Join(keys, "other.txt")
	for path, k := range map[string]*age.X25519Identity{idFile: id, otherFile: other} {
		if err := os.WriteFile(path, []byte(k.String()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		pgtest.Own(t, path)
	}
	repoDir := filepath.Join(pgtest.MkdirOwned(t), "repo")
	repo := "file://" + repoDir
	walship := func(args ...string) (string, error) {
		out, err := walshipOn(t, bin, repo)(args...).CombinedOutput()
		return string(out), err
	}
	recipient := []string{"--age-recipient", id.Recipient().String()}

	c := pgtest.Start(t, pgtest.Options{Version: 16})
	c.Exec(t, "CREATE TABLE secrets (v text)")
	if out, err := walship(append([]string{"archive", "--pg", c.ConnString(), "--until-caught-up"}, recipient...)...); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	if out, err := walship(append([]string{"backup", "--fast", "--pg", c.ConnString()}, recipient...)...); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	// The marker in a table page after the backup's checkpoint (a full
	// page image) and in its WAL record, and in the backup of a second one.
	c.Exec(t, "INSERT INTO secrets SELECT '"+marker+"' || g FROM generate_series(1, 100) g")
	c.Exec(t, "CHECKPOINT")
	if out, err := walship(append([]string{"backup", "--fast", "--pg", c.ConnString()}, recipient...)...); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	c.Exec(t, "SELECT pg_switch_wal()")
	if out, err := walship(append([]string{"archive", "--pg", c.ConnString(), "--until-caught-up"}, recipient...)...); err != nil {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	want := c.Scalar(t, "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY v)) FROM secrets")
	if c.Scalar(t, "SELECT count(*) FROM secrets") != "100" {
		t.Fatal("marker rows not written")
	}

	var objects int
	err = filepath.WalkDir(repoDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		objects++
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("%s holds the marker in plain text", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if objects < 10 {
		t.Fatalf("only %d objects in the repository", objects)
	}

	// verify checks every object's checksum without the identity; with
	// it, backups against their backup.json too.
	for _, args := range [][]string{{"verify"}, {"verify", "--age-identity-file", idFile}} {
		out, err := walship(args...)
		if err != nil || strings.Contains(out, "PROBLEM") || (len(args) == 1) != strings.Contains(out, "NOT CHECKED: 2 backups") {
			t.Errorf("walship %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	target := filepath.Join(pgtest.MkdirOwned(t), "restored")
	for _, bad := range []struct {
		name string
		args []string
		want string
	}{
		{"no identity", nil, "age-identity-file"},
		{"another identity", []string{"--age-identity-file", otherFile}, "no matching age identity"},
	} {
		out, err := walship(append([]string{"restore", "--target-dir", target}, bad.args...)...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("restore with %s: %v, want a failure saying %q:\n%s", bad.name, err, bad.want, out)
		}
		if entries, _ := os.ReadDir(target); len(entries) != 0 {
			t.Errorf("restore with %s left %d entries in the target", bad.name, len(entries))
		}
	}
	if out, err := walship("restore", "--target-dir", target, "--age-identity-file", idFile); err != nil {
		t.Fatalf("restore with the identity: %v\n%s", err, out)
	}
	c.Stop(t)
	r := pgtest.StartDataDir(t, target, pgtest.Options{Version: 16})
	deadline := time.Now().Add(time.Minute)
	for r.Scalar(t, "SELECT pg_is_in_recovery()") == "t" {
		if time.Now().After(deadline) {
			t.Fatal("recovery did not end")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := r.Scalar(t, "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY v)) FROM secrets"); got != want {
		t.Errorf("restored secrets %s, want %s", got, want)
	}
}
