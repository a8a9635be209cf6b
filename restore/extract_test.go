package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
)

// tarEntry is one entry of a test archive.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func tarFile(name, body string, mode int64) tarEntry {
	return tarEntry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body}
}

func tarDir(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func tarSymlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func tarHardLink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o600}}
}

func tarSpecial(name string, flag byte) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: flag, Name: name, Mode: 0o600, Devmajor: 1, Devminor: 3}}
}

// tarBytes writes entries as an archive/tar.Writer does, in format (0 lets
// the writer choose).
func tarBytes(t testing.TB, format tar.Format, entries ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.hdr
		h.Format = format
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("write tar header %q: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// ustarHeader hand-crafts one ustar header block, checksum included, for
// names archive/tar's writer would not produce.
func ustarHeader(name, prefix string, flag byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x000000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = flag
	copy(b[257:], "ustar\x0000")
	copy(b[345:500], prefix)
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// extractTarget returns a new empty target directory, data, and its parent,
// which must hold nothing else after any extraction.
func extractTarget(t *testing.T) (parent, dir string) {
	t.Helper()
	parent = t.TempDir()
	dir = filepath.Join(parent, "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return parent, dir
}

func extractBytes(dir string, b []byte, opts ExtractOptions) (ExtractStats, error) {
	return Extract(context.Background(), bytes.NewReader(b), dir, opts)
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestExtractTree extracts a tree like a data directory's and checks every
// name, type, mode and byte.
func TestExtractTree(t *testing.T) {
	_, dir := extractTarget(t)
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(dir, "ro"), 0o700) }) // before TempDir's removal
	page := strings.Repeat("\x00\x01pg", 2048)
	b := tarBytes(t, 0,
		tarDir("./", 0o755), // dir keeps the mode its creator gave it
		tarFile("backup_label", "START WAL LOCATION: 0/2000028\n", 0o600),
		tarDir("base/", 0o700),
		tarDir("base/1/", 0o700),
		tarFile("base/1/1259", page, 0o600),
		tarFile("base/1/empty", "", 0o600),
		tarHardLink("base/1/1259_link", "base/1/1259"),
		tarDir("pg_wal/", 0o700),
		tarDir("pg_wal/archive_status/", 0o700),
		tarFile("global/pg_control", "control", 0o600), // global/ implied
		tarFile("./deep/a/b/c/file", "deep", 0o644),
		tarFile("dotted//second", "2", 0o600),
		tarDir("group/", 0o750),
		tarFile("group/f", "g", 0o640),
		tarFile("bin/setuid", "#!", 0o4755),
		tarFile("bin/setgid", "#!", 0o2750),
		tarDir("sticky/", 0o1777),
		tarDir("ro/", 0o500),
		tarFile("ro/f", "read only", 0o400),
		tarDir("base/", 0o700), // a repeated directory is fine
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "skipped"}}},
	)
	start := time.Now()
	stats, err := extractBytes(dir, b, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("extracted %d bytes of archive in %v: %+v", len(b), time.Since(start).Round(time.Microsecond), stats)
	want := ExtractStats{Files: 10, HardLinks: 1, Dirs: 14, Bytes: int64(len(page) + 30 + 7 + 4 + 1 + 1 + 2 + 2 + 9)}
	if stats != want {
		t.Errorf("stats = %+v, want %+v", stats, want)
	}
	for _, c := range []struct {
		name string
		mode fs.FileMode
		body string // for regular files
	}{
		{".", fs.ModeDir | 0o700, ""},
		{"backup_label", 0o600, "START WAL LOCATION: 0/2000028\n"},
		{"base", fs.ModeDir | 0o700, ""},
		{"base/1/1259", 0o600, page},
		{"base/1/1259_link", 0o600, page},
		{"base/1/empty", 0o600, ""},
		{"pg_wal/archive_status", fs.ModeDir | 0o700, ""},
		{"global", fs.ModeDir | 0o700, ""},
		{"global/pg_control", 0o600, "control"},
		{"deep/a/b/c", fs.ModeDir | 0o700, ""},
		{"deep/a/b/c/file", 0o644, "deep"},
		{"dotted/second", 0o600, "2"},
		{"group", fs.ModeDir | 0o750, ""},
		{"group/f", 0o640, "g"},
		{"bin/setuid", 0o755, "#!"},
		{"bin/setgid", 0o750, "#!"},
		{"sticky", fs.ModeDir | 0o777, ""},
		{"ro", fs.ModeDir | 0o500, ""},
		{"ro/f", 0o400, "read only"},
	} {
		p := filepath.Join(dir, c.name)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v, want %v", c.name, fi.Mode(), c.mode)
		}
		if fi.Mode().IsRegular() {
			if got, err := os.ReadFile(p); err != nil || string(got) != c.body {
				t.Errorf("%s: %d bytes (%v), want %d", c.name, len(got), err, len(c.body))
			}
		}
	}
	a, err1 := os.Stat(filepath.Join(dir, "base/1/1259"))
	l, err2 := os.Stat(filepath.Join(dir, "base/1/1259_link"))
	if err1 != nil || err2 != nil || !os.SameFile(a, l) {
		t.Errorf("base/1/1259_link is not a hard link of base/1/1259 (%v, %v)", err1, err2)
	}
	if _, err := os.Lstat(filepath.Join(dir, "pax_global_header")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the PAX global header was extracted as a file: %v", err)
	}
}

// TestExtractFormats extracts the same tree written in each tar format
// archive/tar knows, with names too long for a ustar header, and archives
// that GNU tar 1.34 wrote (testdata/extract, made from a tree with
// PG_VERSION, base/1/1259, an empty file, a hard link, a 120-byte directory
// name holding a 150-byte file name, and pg_wal/archive_status, by
// `tar --format=gnu|posix --owner=0 --group=0 --numeric-owner
// --mtime=2026-01-01 --sort=name -C src -cf X.tar .`, posix with
// --pax-option=delete=atime,delete=ctime): "./" prefixes, GNU long names
// and links, PAX records, and zero padding to a 10240-byte record.
func TestExtractFormats(t *testing.T) {
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 150)
	want := map[string]string{
		"PG_VERSION":      "15\n",
		"base/1/1259":     strings.Repeat("p", 3000),
		"empty":           "",
		"link_to_version": "15\n",
		"long/" + long:    "long\n",
	}
	entries := []tarEntry{
		tarDir("./", 0o700),
		tarFile("./PG_VERSION", "15\n", 0o600),
		tarDir("./base/", 0o700),
		tarDir("./base/1/", 0o700),
		tarFile("./base/1/1259", want["base/1/1259"], 0o600),
		tarFile("./empty", "", 0o600),
		tarHardLink("./link_to_version", "./PG_VERSION"),
		tarDir("./long/", 0o750),
		tarFile("./long/"+long, "long\n", 0o640),
		tarDir("./pg_wal/archive_status/", 0o700),
	}
	archives := map[string][]byte{}
	for _, f := range []tar.Format{tar.FormatPAX, tar.FormatGNU} {
		archives[f.String()] = tarBytes(t, f, entries...)
	}
	for _, name := range []string{"gnu.tar", "pax.tar"} {
		b, err := os.ReadFile(filepath.Join("testdata", "extract", name))
		if err != nil {
			t.Fatal(err)
		}
		archives["GNU tar "+name] = b
	}
	for name, b := range archives {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			_, dir := extractTarget(t)
			stats, err := extractBytes(dir, b, ExtractOptions{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			if stats.Files != 4 || stats.HardLinks != 1 || stats.Dirs != 6 || stats.Bytes != 3008 {
				t.Errorf("stats = %+v, want 4 files, 1 hard link, 6 directories, 3008 bytes", stats)
			}
			for n, body := range want {
				if got, err := os.ReadFile(filepath.Join(dir, n)); err != nil || string(got) != body {
					t.Errorf("%s: %q (%v), want %q", n, got, err, body)
				}
			}
			if fi, err := os.Lstat(filepath.Join(dir, "long")); err != nil || fi.Mode() != fs.ModeDir|0o750 {
				t.Errorf("long: %v (%v), want a directory with mode 0750", fi.Mode(), err)
			}
		})
	}
}

// TestExtractOptions checks what the options let through.
func TestExtractOptions(t *testing.T) {
	t.Run("ReplaceFiles", func(t *testing.T) {
		b := tarBytes(t, 0, tarFile("a", "first", 0o600), tarFile("a", "second", 0o640))
		_, dir := extractTarget(t)
		if _, err := extractBytes(dir, b, ExtractOptions{}); !errors.Is(err, ErrBadArchive) || !strings.Contains(err.Error(), "duplicate") {
			t.Errorf("a duplicate file without ReplaceFiles: %v, want a duplicate name error", err)
		}
		_, dir = extractTarget(t)
		if _, err := extractBytes(dir, b, ExtractOptions{ReplaceFiles: true}); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(dir, "a"))
		if got, _ := os.ReadFile(filepath.Join(dir, "a")); string(got) != "second" || fi.Mode() != 0o640 {
			t.Errorf("with ReplaceFiles a holds %q, mode %v; want the later entry's second, 0640", got, fi.Mode())
		}
	})
	t.Run("AllowSymlinks", func(t *testing.T) {
		_, dir := extractTarget(t)
		b := tarBytes(t, 0, tarDir("pg_tblspc/", 0o700), tarSymlink("pg_tblspc/16384", "/srv/tablespaces/ts1"))
		stats, err := extractBytes(dir, b, ExtractOptions{AllowSymlinks: true})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(filepath.Join(dir, "pg_tblspc/16384")); err != nil || got != "/srv/tablespaces/ts1" || stats.Symlinks != 1 {
			t.Errorf("pg_tblspc/16384 -> %q (%v), %d symlinks; want -> /srv/tablespaces/ts1", got, err, stats.Symlinks)
		}
	})
}

// TestExtractRefuses feeds archives that try to write outside the target
// directory, or hold what a base backup never does: each must fail with an
// error naming the entry and leave the target's parent as it was.
func TestExtractRefuses(t *testing.T) {
	allow := ExtractOptions{AllowSymlinks: true, ReplaceFiles: true}
	for _, c := range []struct {
		name    string
		opts    ExtractOptions
		archive func(t *testing.T, parent string) []byte
		entry   string // the entry the error names
		want    string
	}{
		{"absolute", allow, entriesOf(tarFile("{parent}/evil", "x", 0o600)), "{parent}/evil", "absolute"},
		{"dotdot", allow, entriesOf(tarFile("../evil", "x", 0o600)), "../evil", `".."`},
		{"dotdot inside", allow, entriesOf(tarFile("a/b/../../../evil", "x", 0o600)), "a/b/../../../evil", `".."`},
		{"dotdot dir", allow, entriesOf(tarDir("../evil/", 0o700)), "../evil/", `".."`},
		{"ustar prefix dotdot", allow, func(*testing.T, string) []byte {
			return slices.Concat(ustarHeader("evil", "..", tar.TypeReg, 0), make([]byte, 1024))
		}, "../evil", `".."`},
		{"GNU long name dotdot", allow, func(t *testing.T, _ string) []byte {
			return tarBytes(t, tar.FormatGNU, tarFile("../"+strings.Repeat("e", 150), "x", 0o600))
		}, "../" + strings.Repeat("e", 150), `".."`},
		{"symlink refused", ExtractOptions{}, entriesOf(tarSymlink("pg_tblspc", "{parent}")), "pg_tblspc", "AllowSymlinks"},
		{"write through absolute symlink", allow,
			entriesOf(tarSymlink("a", "{parent}"), tarFile("a/evil", "x", 0o600)), "a/evil", "through the symlink a"},
		{"write through relative symlink", allow,
			entriesOf(tarSymlink("a", ".."), tarFile("a/evil", "x", 0o600)), "a/evil", "through the symlink a"},
		{"write through inner symlink", allow,
			entriesOf(tarDir("sub/", 0o700), tarSymlink("a", "sub"), tarFile("a/x", "x", 0o600)), "a/x", "through the symlink a"},
		{"write through nested symlink", allow,
			entriesOf(tarDir("d/", 0o700), tarSymlink("d/l", "../.."), tarFile("d/l/evil", "x", 0o600)), "d/l/evil", "through the symlink d/l"},
		{"directory through symlink", allow,
			entriesOf(tarSymlink("a", "{parent}"), tarDir("a/evil/", 0o700)), "a/evil/", "through the symlink a"},
		{"file over symlink", allow,
			entriesOf(tarSymlink("a", "{parent}/outside"), tarFile("a", "x", 0o600)), "a", "symlink"},
		{"directory over symlink", allow,
			entriesOf(tarSymlink("a", "{parent}"), tarDir("a/", 0o700)), "a/", "symlink"},
		{"hard link through symlink", allow,
			entriesOf(tarFile("f", "x", 0o600), tarSymlink("a", "{parent}"), tarHardLink("a/evil", "f")), "a/evil", "through the symlink a"},
		{"hard link to a file through symlink", allow,
			entriesOf(tarSymlink("a", "{parent}"), tarHardLink("h", "a/outside")), "h", "through the symlink a"},
		{"hard link to symlink", allow,
			entriesOf(tarSymlink("a", "{parent}/outside"), tarHardLink("h", "a")), "h", "is a symlink"},
		{"hard link outside", allow, entriesOf(tarHardLink("h", "../outside")), "h", `".."`},
		{"hard link absolute", allow, entriesOf(tarHardLink("h", "{parent}/outside")), "h", "absolute"},
		{"hard link to nothing", allow, entriesOf(tarHardLink("h", "outside")), "h", "no earlier entry"},
		{"hard link to directory", allow, entriesOf(tarDir("d/", 0o700), tarHardLink("h", "d")), "h", "directory"},
		{"character device", allow, entriesOf(tarSpecial("null", tar.TypeChar)), "null", "device"},
		{"block device", allow, entriesOf(tarSpecial("sda", tar.TypeBlock)), "sda", "device"},
		{"FIFO", allow, entriesOf(tarSpecial("fifo", tar.TypeFifo)), "fifo", "FIFO"},
		{"unknown type", allow, entriesOf(tarSpecial("vol", 'V')), "vol", "refused"},
		{"duplicate file", ExtractOptions{}, entriesOf(tarFile("a", "1", 0o600), tarFile("a", "2", 0o600)), "a", "duplicate"},
		{"file over directory", allow, entriesOf(tarDir("d/", 0o700), tarFile("d", "x", 0o600)), "d", "directory"},
		{"directory over file", allow, entriesOf(tarFile("f", "x", 0o600), tarDir("f/", 0o700)), "f/", "regular file"},
		{"file under file", allow, entriesOf(tarFile("f", "x", 0o600), tarFile("f/x", "x", 0o600)), "f/x", "not a directory"},
		{"file as the directory", allow, entriesOf(tarFile(".", "x", 0o600)), ".", "target directory"},
		{"file with a slash", allow, func(*testing.T, string) []byte {
			return slices.Concat(ustarHeader("f/", "", tar.TypeReg, 0), make([]byte, 1024))
		}, "f/", "ends in /"},
		{"long component", allow, entriesOf(tarFile(strings.Repeat("c", 256), "x", 0o600)), strings.Repeat("c", 256), "more than 255"},
		{"long name", allow, entriesOf(tarFile(strings.Repeat("c/", 2048)+"c", "x", 0o600)), strings.Repeat("c/", 2048) + "c", "more than 4096"},
		{"huge GNU name", allow, func(t *testing.T, _ string) []byte {
			return tarBytes(t, tar.FormatGNU, tarFile(strings.Repeat("x", 100_000), "x", 0o600))
		}, strings.Repeat("x", 100_000), "100000 bytes long, more than 4096"},
		{"empty name", allow, func(*testing.T, string) []byte {
			return slices.Concat(ustarHeader("", "", tar.TypeReg, 0), make([]byte, 1024))
		}, "", "empty"},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			parent, dir := extractTarget(t)
			outside := filepath.Join(parent, "outside")
			if err := os.WriteFile(outside, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := extractBytes(dir, c.archive(t, parent), c.opts)
			entry := fmt.Sprintf("entry %q", strings.ReplaceAll(c.entry, "{parent}", parent))
			if len(c.entry) > 200 { // long names are cut short
				entry = fmt.Sprintf("entry %q… (%d bytes)", c.entry[:200], len(c.entry))
			}
			if !errors.Is(err, ErrBadArchive) || !strings.Contains(err.Error(), entry) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want ErrBadArchive naming %s and saying %s", err, entry, c.want)
			}
			t.Logf("%v", err)
			checkOutside(t, parent)
		})
	}
}

// entriesOf returns a func writing entries, with {parent} replaced by the
// target's parent in names and link targets.
func entriesOf(entries ...tarEntry) func(*testing.T, string) []byte {
	return func(t *testing.T, parent string) []byte {
		var es []tarEntry
		for _, e := range entries {
			e.hdr.Name = strings.ReplaceAll(e.hdr.Name, "{parent}", parent)
			e.hdr.Linkname = strings.ReplaceAll(e.hdr.Linkname, "{parent}", parent)
			es = append(es, e)
		}
		return tarBytes(t, 0, es...)
	}
}

// checkOutside checks that parent holds only the target, data, and the file
// outside, unchanged and not linked from anywhere.
func checkOutside(t *testing.T, parent string) {
	t.Helper()
	if got := dirNames(t, parent); !slices.Equal(got, []string{"data", "outside"}) {
		t.Errorf("the target's parent holds %q, want only data and outside", got)
	}
	outside := filepath.Join(parent, "outside")
	b, err := os.ReadFile(outside)
	out, serr := os.Lstat(outside)
	if err != nil || serr != nil || string(b) != "keep" || out.Mode() != 0o600 {
		t.Fatalf("outside changed: %q %v (%v, %v)", b, out.Mode(), err, serr)
	}
	err = filepath.WalkDir(filepath.Join(parent, "data"), func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if fi, err := os.Lstat(p); err == nil && os.SameFile(fi, out) {
			t.Errorf("%s is a hard link to outside", p)
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}

// TestExtractDamaged feeds truncated, corrupt and padded archives.
func TestExtractDamaged(t *testing.T) {
	// a: header at 0, data 512-1512, padding to 1536; b: header at 1536,
	// data 2048-2648, padding to 3072; the end marker 3072-4096.
	good := tarBytes(t, tar.FormatUSTAR, tarFile("a", strings.Repeat("a", 1000), 0o600), tarFile("b", strings.Repeat("b", 600), 0o600))
	if len(good) != 4096 {
		t.Fatalf("the archive is %d bytes, want 4096", len(good))
	}
	corrupt := bytes.Clone(good)
	corrupt[1536+1] ^= 0xff // b's name, against its checksum
	nulName := tarBytes(t, tar.FormatPAX, tarFile(strings.Repeat("n", 120)+"X", "x", 0o600))
	nulName[bytes.IndexByte(nulName, 'X')] = 0
	pax512 := tarBytes(t, tar.FormatPAX, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "p", Mode: 0o600,
		PAXRecords: map[string]string{"comment": strings.Repeat("c", 499)}}}) // "512 comment=ccc…\n"
	bigPAX := slices.Concat(ustarHeader("PaxHeader", "", tar.TypeXHeader, 2<<20), bytes.Repeat([]byte("c"), 2<<20),
		ustarHeader("p", "", tar.TypeReg, 0), make([]byte, 1024))
	for _, c := range []struct {
		name    string
		archive []byte
		want    string // "" for success
	}{
		{"whole", good, ""},
		{"record padding", slices.Concat(good, make([]byte, 10240-4096)), ""},
		{"only the end marker", make([]byte, 1024), ""},
		{"empty stream", nil, "without its end-of-archive marker at the start of the archive"},
		{"inside a header", good[:1800], `ends inside a header after entry "a" (offset 1536)`},
		{"inside data", good[:2300], `entry "b": the archive ends after 252 of the entry's 600 bytes`},
		{"after data", good[:2648], `without its end-of-archive marker after entry "b" (offset 3072)`},
		{"inside padding", good[:2900], `without its end-of-archive marker after entry "b"`},
		{"between entries", good[:1536], `without its end-of-archive marker after entry "a" (offset 1536)`},
		{"at the end marker", good[:3072], `without its end-of-archive marker after entry "b"`},
		{"half the end marker", good[:3584], `without its end-of-archive marker after entry "b"`},
		{"inside the end marker", good[:3700], `ends inside a header after entry "b" (offset 3072)`},
		{"after a PAX header", pax512[:1024], "without its end-of-archive marker at the start"},
		{"data after the end", slices.Concat(good, []byte("trailing")), "data after the end-of-archive marker, at offset 4096"},
		{"corrupt header", corrupt, `corrupt tar header after entry "a" (offset 1536)`},
		{"NUL in a PAX name", nulName, "corrupt tar header at the start of the archive"},
		{"PAX header over 1 MiB", bigPAX, "corrupt tar header at the start of the archive"},
		{"zero block then header", slices.Concat(good[:1536], make([]byte, 512), good[1536:]), `corrupt tar header after entry "a"`},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			parent, dir := extractTarget(t)
			_, err := extractBytes(dir, c.archive, ExtractOptions{})
			switch {
			case c.want == "" && err != nil:
				t.Fatal(err)
			case c.want != "" && (!errors.Is(err, ErrBadArchive) || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error %v; want ErrBadArchive saying %s", err, c.want)
			}
			if err != nil {
				t.Logf("%v", err)
			}
			if got := dirNames(t, parent); !slices.Equal(got, []string{"data"}) {
				t.Errorf("the target's parent holds %q, want only data", got)
			}
		})
	}
	if !bytes.HasPrefix(pax512[512:], []byte("512 comment=")) || pax512[1023] != '\n' {
		t.Errorf("the PAX header's records are not exactly one block: %q", pax512[512:530])
	}
}

// TestExtractEntryNames checks the names an entry may have.
func TestExtractEntryNames(t *testing.T) {
	for _, c := range []struct{ raw, want string }{
		{"a", "a"}, {"./a", "a"}, {"a//b/", "a/b"}, {"./", "."}, {".", "."}, {"a/./b", "a/b"},
		{"", ""}, {"a\x00b", ""}, {"/a", ""}, {"//a", ""}, {"../a", ""}, {"a/..", ""}, {"a/../b", ""},
		{"..", ""}, {strings.Repeat("x", 256), ""}, {strings.Repeat("x/", 2049), ""},
	} {
		got, err := cleanEntryName(c.raw)
		if (err != nil) != (c.want == "") || got != c.want {
			t.Errorf("cleanEntryName(%q) = %q, %v; want %q", c.raw, got, err, c.want)
		}
	}
}

// TestExtractTarget checks that the target must be an existing empty
// directory.
func TestExtractTarget(t *testing.T) {
	empty := tarBytes(t, 0)
	parent, dir := extractTarget(t)
	if _, err := extractBytes(filepath.Join(parent, "missing"), empty, ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "create it") {
		t.Errorf("a missing target: %v, want an error saying to create it", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := extractBytes(dir, empty, ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "not empty (it holds PG_VERSION)") {
		t.Errorf("a target that is not empty: %v, want an error saying so", err)
	}
	if _, err := extractBytes(filepath.Join(dir, "PG_VERSION"), empty, ExtractOptions{}); err == nil {
		t.Errorf("a target that is a file: no error")
	}
}

// patternReader yields n bytes of a fixed pseudo-random pattern.
type patternReader struct {
	n     int64
	state uint64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n)]
	for i := range b {
		p.state ^= p.state << 13
		p.state ^= p.state >> 7
		p.state ^= p.state << 17
		b[i] = byte(p.state)
	}
	p.n -= int64(len(b))
	return len(b), nil
}

// largeArchive streams an archive holding one file of size pattern bytes,
// returning its reader and a func giving the file's sha256 once read.
func largeArchive(size int64) (io.Reader, func() [32]byte) {
	pr, pw := io.Pipe()
	h := sha256.New()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "base/1/16384", Mode: 0o600, Size: size})
		if err == nil {
			_, err = io.Copy(tw, io.TeeReader(&patternReader{n: size, state: 1}, h))
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr, func() [32]byte { <-done; return [32]byte(h.Sum(nil)) }
}

// TestExtractLargeFile streams a 256 MiB file from a pipe and checks that
// memory stays bounded (one buffer, whatever the file's size: a relation
// segment is 1 GiB) and that every byte arrives.
func TestExtractLargeFile(t *testing.T) {
	const size = 256 << 20
	_, dir := extractTarget(t)
	r, sum := largeArchive(size)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	stats, err := Extract(context.Background(), r, dir, ExtractOptions{})
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("extracted and synced %d MiB in %v (%.0f MiB/s), %d KiB allocated", size>>20, took.Round(time.Millisecond),
		float64(size>>20)/took.Seconds(), alloc>>10)
	if alloc > 4<<20 {
		t.Errorf("allocated %d KiB while streaming, want at most 4 MiB", alloc>>10)
	}
	if stats.Bytes != size || stats.Files != 1 {
		t.Errorf("stats = %+v, want 1 file of %d bytes", stats, size)
	}
	f, err := os.Open(filepath.Join(dir, "base/1/16384"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	if got, want := [32]byte(h.Sum(nil)), sum(); got != want {
		t.Errorf("the extracted file's sha256 is %x, want %x", got, want)
	}
}

// cancelReader cancels a context once n bytes were read through it.
type cancelReader struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *cancelReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if c.n -= int64(n); c.n <= 0 {
		c.cancel()
	}
	return n, err
}

// TestExtractStops checks that a cancelled context and a failing reader stop
// an extraction with their errors, which are not ErrBadArchive.
func TestExtractStops(t *testing.T) {
	_, dir := extractTarget(t)
	ctx, cancel := context.WithCancel(context.Background())
	r, _ := largeArchive(64 << 20)
	_, err := Extract(ctx, &cancelReader{r: r, n: 8 << 20, cancel: cancel}, dir, ExtractOptions{NoSync: true})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), `entry "base/1/16384"`) || errors.Is(err, ErrBadArchive) {
		t.Errorf("cancelled while streaming a file: %v, want context.Canceled naming the entry", err)
	}

	_, dir = extractTarget(t)
	broken := errors.New("connection reset")
	good := tarBytes(t, 0, tarFile("a", strings.Repeat("a", 5000), 0o600))
	_, err = Extract(context.Background(), io.MultiReader(bytes.NewReader(good[:2000]), iotestErrReader{broken}), dir, ExtractOptions{})
	if !errors.Is(err, broken) || !strings.Contains(err.Error(), `entry "a"`) || errors.Is(err, ErrBadArchive) {
		t.Errorf("a reader failing inside a file: %v, want its error naming the entry", err)
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

// TestExtractPostgresBaseBackup extracts what pg_basebackup -Ft of
// PostgreSQL 15 writes, base.tar and a tablespace's <oid>.tar, links the
// tablespace in as a restore does, and lets pg_verifybackup check every
// file against the server's backup_manifest.
func TestExtractPostgresBaseBackup(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	spc := pgtest.MkdirOwned(t)
	c.Exec(t, "CREATE TABLESPACE extract_ts LOCATION '"+spc+"'")
	c.Exec(t, "CREATE TABLE extract_t (id int PRIMARY KEY, v text) TABLESPACE extract_ts")
	c.Exec(t, "INSERT INTO extract_t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
	c.Exec(t, "CREATE TABLE extract_u AS SELECT g AS id FROM generate_series(1, 20000) g")

	bbDir := filepath.Join(pgtest.MkdirOwned(t), "bb")
	bb, err := pgtest.ClientBin("pg_basebackup")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bb, "-D", bbDir, "-d", c.ReplConnString(), "-Ft", "-X", "none", "-c", "fast", "--no-sync")
	cmd.Dir = "/"
	pgtest.RunAs(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	tars, err := filepath.Glob(filepath.Join(bbDir, "*.tar"))
	if err != nil || len(tars) != 2 {
		t.Fatalf("pg_basebackup wrote %q (%v), want base.tar and one tablespace's", tars, err)
	}

	root := t.TempDir()
	data := filepath.Join(root, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{} // pg_tblspc/<oid> -> where the tablespace went
	for _, tarPath := range tars {
		name := filepath.Base(tarPath)
		target := data
		if name != "base.tar" {
			// A tablespace goes to its own directory, linked from
			// pg_tblspc as the tablespace_map says.
			oid := strings.TrimSuffix(name, ".tar")
			target = filepath.Join(root, "ts-"+oid)
			if err := os.Mkdir(target, 0o700); err != nil {
				t.Fatal(err)
			}
			links[filepath.Join(data, "pg_tblspc", oid)] = target
		}
		f, err := os.Open(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		start := time.Now()
		stats, err := Extract(context.Background(), f, target, ExtractOptions{})
		took := time.Since(start)
		f.Close()
		if err != nil {
			t.Fatalf("extract %s: %v", name, err)
		}
		t.Logf("extracted %s (%d KiB) in %v, synced: %+v", name, fi.Size()>>10, took.Round(time.Millisecond), stats)
		compareWithTar(t, tarPath, target)
	}
	for link, target := range links {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(data, "tablespace_map")); err != nil || !strings.Contains(string(b), spc) {
		t.Errorf("tablespace_map holds %q (%v), want the tablespace's location %s", b, err, spc)
	}

	manifest, err := os.ReadFile(filepath.Join(bbDir, "backup_manifest"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "backup_manifest"), manifest, 0o600); err != nil {
		t.Fatal(err)
	}
	vb, err := pgtest.ClientBin("pg_verifybackup")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(vb, "-n", data).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_verifybackup -n: %v\n%s", err, out)
	}
	t.Logf("pg_verifybackup: %s", strings.TrimSpace(string(out)))
}

// compareWithTar checks that every entry of the archive at tarPath is in
// dir with its type, permission bits and size.
func compareWithTar(t *testing.T, tarPath, dir string) {
	t.Helper()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	n := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		fi, err := os.Lstat(filepath.Join(dir, hdr.Name))
		if err != nil {
			t.Errorf("%s: %v", hdr.Name, err)
			continue
		}
		want := fs.FileMode(hdr.Mode & 0o777)
		if hdr.Typeflag == tar.TypeDir {
			want |= fs.ModeDir
		}
		if hdr.Typeflag != tar.TypeDir && hdr.Typeflag != tar.TypeReg {
			t.Errorf("%s: type %q in a base backup", hdr.Name, hdr.Typeflag)
		}
		if fi.Mode() != want || (fi.Mode().IsRegular() && fi.Size() != hdr.Size) {
			t.Errorf("%s: %v, %d bytes; want %v, %d bytes", hdr.Name, fi.Mode(), fi.Size(), want, hdr.Size)
		}
	}
	t.Logf("%s: %d entries match", filepath.Base(tarPath), n)
}

// TestTreeParts extracts the parts of one archive concurrently, as a
// restore does: a part may name files in directories whose entries are in
// another part, or come before them, and each directory still gets the
// mode of its entry. Run with -race, it also checks the tree's locking.
func TestTreeParts(t *testing.T) {
	_, dir := extractTarget(t)
	var parts [][]byte
	parts = append(parts, tarBytes(t, 0, tarDir("base", 0o750), tarDir("base/1", 0o700), tarFile("PG_VERSION", "16\n", 0o600)))
	for i := range 12 {
		var es []tarEntry
		for j := range 20 {
			es = append(es, tarFile(fmt.Sprintf("base/1/%d", i*20+j), strings.Repeat(fmt.Sprint(i, j), 300), 0o600))
			es = append(es, tarFile(fmt.Sprintf("base/%d/%d", 2+i%3, i*20+j), "x", 0o640))
		}
		parts = append(parts, tarBytes(t, 0, es...))
	}
	parts = append(parts, tarBytes(t, 0, tarDir("base/2", 0o755), tarDir("base/3", 0o750)))
	tree, err := NewTree(dir, ExtractOptions{})
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
	for range parts {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := tree.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]fs.FileMode{"base": 0o750, "base/1": 0o700, "base/2": 0o755, "base/3": 0o750, "base/4": 0o700} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %v", name, fi.Mode(), err, mode)
		}
	}
	got, err := os.ReadFile(filepath.Join(dir, "base/1/239"))
	if err != nil || string(got) != strings.Repeat(fmt.Sprint(11, 19), 300) {
		t.Errorf("base/1/239: %q, %v", got[:min(len(got), 10)], err)
	}
	if n := len(dirNames(t, filepath.Join(dir, "base/1"))); n != 240 {
		t.Errorf("base/1 holds %d files, want 240", n)
	}
}
