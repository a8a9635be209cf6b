package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestExtractReadCutShort: a download cut short fails with an error that
// wraps io.ErrUnexpectedEOF (net/http's for a body shorter than its
// Content-Length, which the codec passes on). That is the reader failing,
// not a damaged archive: the error must say so, keep the reader's error,
// and not be ErrBadArchive, inside a file and inside a header alike.
func TestExtractReadCutShort(t *testing.T) {
	good := tarBytes(t, 0, tarFile("a", strings.Repeat("a", 5000), 0o600), tarFile("b", "b", 0o600))
	cut := fmt.Errorf("codec: object backups/x/base.tar: read: %w", io.ErrUnexpectedEOF)
	for name, at := range map[string]int{"inside a file": 2000, "inside a header": 512*11 + 100} {
		t.Run(name, func(t *testing.T) {
			_, dir := extractTarget(t)
			_, err := Extract(context.Background(), io.MultiReader(bytes.NewReader(good[:at]), iotestErrReader{cut}), dir, ExtractOptions{})
			if !errors.Is(err, cut) || errors.Is(err, ErrBadArchive) || !strings.Contains(err.Error(), "backups/x/base.tar") {
				t.Errorf("a download cut short: %v, want the reader's error, not ErrBadArchive", err)
			}
		})
	}
	// A stream that simply ends early is a truncated archive.
	_, dir := extractTarget(t)
	if _, err := Extract(context.Background(), bytes.NewReader(good[:2000]), dir, ExtractOptions{}); !errors.Is(err, ErrBadArchive) {
		t.Errorf("an archive that ends early: %v, want ErrBadArchive", err)
	}
}

// TestTreeExtractAgain: a download cut short anywhere in an archive, then
// extracted again from its start into the same tree, gives the tree one
// extraction gives; between the attempts only directories are left.
func TestTreeExtractAgain(t *testing.T) {
	archive := tarBytes(t, 0,
		tarDir("base", 0o750), tarDir("base/1", 0o700),
		tarFile("base/1/a", strings.Repeat("a", 3000), 0o600),
		tarFile("base/1/b", "b", 0o640),
		tarHardLink("base/1/c", "base/1/a"),
		tarFile("global/d", strings.Repeat("d", 700), 0o600),
	)
	_, want := extractTarget(t)
	if _, err := extractBytes(want, archive, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	cut := fmt.Errorf("read: %w", io.ErrUnexpectedEOF)
	for at := 0; at < len(archive); at += 300 {
		_, dir := extractTarget(t)
		tree, err := NewTree(dir, ExtractOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tree.extractAgainOnError(t.Context(), io.MultiReader(bytes.NewReader(archive[:at]), iotestErrReader{cut}))
		if !errors.Is(err, cut) {
			t.Fatalf("cut at %d: %v, want the reader's error", at, err)
		}
		for _, f := range treeFiles(t, dir) {
			if !strings.Contains(f, "/ ") {
				t.Errorf("cut at %d: the failed attempt left %s", at, f)
			}
		}
		if _, err := tree.extractAgainOnError(t.Context(), bytes.NewReader(archive)); err != nil {
			t.Fatalf("cut at %d, then again: %v", at, err)
		}
		if err := tree.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got, w := treeFiles(t, dir), treeFiles(t, want); !slices.Equal(got, w) {
			t.Errorf("cut at %d, then again: the tree holds\n%v\nwant\n%v", at, got, w)
		}
	}
}

// treeFiles describes every entry under dir: its name (with a / for a
// directory), mode, link count and, for a file, a digest of its bytes.
func treeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			out = append(out, fmt.Sprintf("%s/ %v", rel, fi.Mode()))
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s %v %d %x", rel, fi.Mode(), fi.Sys().(*syscall.Stat_t).Nlink, sha256.Sum256(b)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
