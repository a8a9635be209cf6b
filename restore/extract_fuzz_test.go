package restore

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzExtract extracts any bytes as a tar archive, whole or as two parts
// into one Tree at once: it must never panic, never touch anything outside
// the target directory (a sibling, outside, stays an empty directory, and
// nothing in the target links to it but symlinks, and those only with
// AllowSymlinks), fail only with ErrBadArchive (the reader and the file
// system do not fail here), and, when it succeeds, have made every name
// the archive holds, of the kind it says.
func FuzzExtract(f *testing.F) {
	seeds := [][]tarEntry{
		{tarDir("base", 0o700), tarFile("base/1", "data", 0o600), tarHardLink("base/2", "base/1"), tarSymlink("pg_wal", "/elsewhere"), tarFile("PG_VERSION", "16\n", 0o600)},
		{tarFile("a/b/c", strings.Repeat("x", 600), 0o640), tarDir("a", 0o000), tarDir("a", 0o755), tarFile("./d", "", 0o7777)},
		{tarSymlink("l", "../outside"), tarFile("l/x", "escape", 0o600)},
		{tarSymlink("l", "../outside"), tarDir("l/d", 0o700)},
		{tarSymlink("l", "../outside"), tarHardLink("h", "l/x")},
		{tarSymlink("l", "/"), tarSymlink("l/m", "x")},
		{tarSymlink("l", "."), tarFile("l", "over the link", 0o600)},
		{tarFile("f", "one", 0o600), tarFile("f", "two", 0o600), tarHardLink("g", "f"), tarFile("g", "three", 0o600)},
		{tarFile("../outside/x", "escape", 0o600)},
		{tarFile("/abs", "escape", 0o600)},
		{tarHardLink("h", "../outside/x")},
		{tarFile("a", "file", 0o600), tarFile("a/b", "under a file", 0o600)},
		{tarDir("d", 0o700), tarHardLink("h", "d")},
		{tarSpecial("null", tar.TypeChar), tarSpecial("fifo", tar.TypeFifo)},
		{tarFile(strings.Repeat("n", 300), "long", 0o600), tarFile("x/"+strings.Repeat("y", 120)+"/z", "gnu", 0o600)},
	}
	for _, es := range seeds {
		b := tarBytes(f, 0, es...)
		f.Add(b, uint8(1), uint16(0)) // symlinks allowed
		f.Add(b, uint8(2), uint16(0)) // later files replace earlier ones
	}
	for _, name := range []string{"gnu.tar", "pax.tar"} {
		if b, err := os.ReadFile(filepath.Join("testdata", "extract", name)); err == nil {
			f.Add(b, uint8(3), uint16(0))
		}
	}
	halves := append(tarBytes(f, 0, tarDir("base", 0o750), tarFile("base/1", "a", 0o600)), tarBytes(f, 0, tarFile("base/2", "b", 0o600), tarDir("base", 0o700))...)
	f.Add(halves, uint8(4), uint16(3*512+1024))
	f.Add(halves, uint8(7), uint16(3*512+1024))
	f.Fuzz(func(t *testing.T, data []byte, flags uint8, split uint16) {
		opts := ExtractOptions{AllowSymlinks: flags&1 != 0, ReplaceFiles: flags&2 != 0, NoSync: true}
		parent := t.TempDir()
		dir, outside := filepath.Join(parent, "data"), filepath.Join(parent, "outside")
		for _, d := range []string{dir, outside} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { chmodAll(parent) })
		parts := [][]byte{data}
		if flags&4 != 0 {
			cut := min(int(split), len(data))
			parts = [][]byte{data[:cut], data[cut:]}
		}
		tree, err := NewTree(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, len(parts))
		for _, p := range parts {
			go func() {
				_, err := tree.Extract(t.Context(), bytes.NewReader(p))
				errs <- err
			}()
		}
		var failed []error
		for range parts {
			if err := <-errs; err != nil {
				failed = append(failed, err)
			}
		}
		if err := tree.Close(t.Context()); err != nil {
			failed = append(failed, err)
		}
		for _, err := range failed {
			if !errors.Is(err, ErrBadArchive) {
				t.Errorf("an error that does not blame the archive: %v", err)
			}
		}
		checkConfined(t, parent, opts.AllowSymlinks)
		if len(failed) > 0 {
			return
		}
		want := map[string]byte{}
		for _, p := range parts {
			if err := entryKinds(p, want); err != nil {
				t.Fatalf("Extract accepted an archive that archive/tar cannot read: %v", err)
			}
		}
		if got := kindsUnder(t, dir); !maps.Equal(got, want) {
			t.Fatalf("extracted %v; the archive holds %v", got, want)
		}
	})
}

// checkConfined checks that parent holds only data and an empty outside
// directory, and that data holds only directories, regular files and, if
// allowed, symlinks.
func checkConfined(t *testing.T, parent string, symlinks bool) {
	t.Helper()
	names, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Collect(func(yield func(string) bool) {
		for _, e := range names {
			if !yield(e.Name()) {
				return
			}
		}
	}); !slices.Equal(got, []string{"data", "outside"}) {
		t.Fatalf("the target's parent holds %q, want only data and outside", got)
	}
	outside := filepath.Join(parent, "outside")
	fi, err := os.Lstat(outside)
	if err != nil || !fi.IsDir() {
		t.Fatalf("outside is now %v, %v", fi.Mode(), err)
	}
	if in, err := os.ReadDir(outside); err != nil || len(in) > 0 {
		t.Fatalf("outside holds %d entries, %v", len(in), err)
	}
	err = filepath.WalkDir(filepath.Join(parent, "data"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch m := d.Type(); {
		case m.IsDir(), m.IsRegular():
		case m&fs.ModeSymlink != 0 && symlinks:
		default:
			t.Errorf("%s is a %v", p, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// entryKinds adds the names an archive makes, as archive/tar reads it, to
// kinds: 'f' for a file or hard link, 'l' for a symlink, 'd' for a
// directory, named or implied.
func entryKinds(archive []byte, kinds map[string]byte) error {
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name, err := cleanEntryName(h.Name)
		if err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeLink:
			kinds[name] = 'f'
		case tar.TypeSymlink:
			kinds[name] = 'l'
		case tar.TypeDir:
			kinds[name] = 'd'
		}
		for i := range len(name) {
			if name[i] == '/' {
				kinds[name[:i]] = 'd'
			}
		}
		delete(kinds, ".")
	}
}

// kindsUnder lists what dir holds as entryKinds does.
func kindsUnder(t *testing.T, dir string) map[string]byte {
	kinds := map[string]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		switch {
		case d.Type().IsRegular():
			kinds[filepath.ToSlash(rel)] = 'f'
		case d.Type()&fs.ModeSymlink != 0:
			kinds[filepath.ToSlash(rel)] = 'l'
		case d.IsDir():
			kinds[filepath.ToSlash(rel)] = 'd'
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return kinds
}

// chmodAll makes every directory under dir writable and searchable again,
// so that the test's cleanup can remove what an archive made read-only.
func chmodAll(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
}
