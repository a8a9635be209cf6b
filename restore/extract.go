package restore

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ErrBadArchive is wrapped by the errors Extract returns because of what the
// tar stream holds: a damaged or truncated archive, or an entry that is
// unsafe or not allowed (a name leaving the target directory, a path through
// a symlink, a device file, a duplicate). Failures of the reader or of the
// local file system do not wrap it.
var ErrBadArchive = errors.New("unsafe or damaged tar archive")

// Bounds on what a tar entry may name. archive/tar itself bounds PAX and GNU
// long-name headers to 1 MiB before allocating.
const (
	// maxEntryName is the longest entry name or link target, in bytes
	// (Linux's PATH_MAX).
	maxEntryName = 4096
	// maxNameComponent is the longest component of an entry name, in
	// bytes (NAME_MAX).
	maxNameComponent = 255
	// extractBuf is the size of the one buffer that streams file data.
	extractBuf = 256 << 10
	// syncWorkers is how many files are fsynced at once, while extraction
	// goes on: concurrent fsyncs share the file system's journal commits.
	syncWorkers = 8
	// tarBlock is the tar block size; the end of an archive is two zero
	// blocks.
	tarBlock = 512
)

// ExtractOptions says what Extract accepts beyond regular files and
// directories. The zero value is right for walship's own base backups.
type ExtractOptions struct {
	// AllowSymlinks lets symbolic link entries be created, with the target
	// the archive gives, which may be absolute or lead outside the target
	// directory (PostgreSQL sends pg_tblspc links that way when a backup
	// has no tablespace_map). Without it a symlink entry is an error;
	// walship's backups use TABLESPACE_MAP and carry none. Either way no
	// later entry is ever written through a symlink.
	AllowSymlinks bool
	// ReplaceFiles lets a later regular file entry replace an earlier
	// regular file (or hard link) of the same name, as tar does. Without
	// it a duplicate name is an error. A directory entry may always
	// repeat an earlier directory; the last mode wins.
	ReplaceFiles bool
	// NoSync skips the fsyncs, for tests that do not need the data
	// directory to survive a crash.
	NoSync bool
}

// ExtractStats counts what Extract made.
type ExtractStats struct {
	Files     int64 // regular files written
	HardLinks int64
	Symlinks  int64
	Dirs      int64 // directories made, named by an entry or implied by a path
	Bytes     int64 // file data written
}

// Extract writes the tar stream r, a base backup's base.tar or <oid>.tar as
// BASE_BACKUP or pg_basebackup -Ft produce it (ustar, GNU and PAX headers),
// under dir, which must exist and be empty: the caller creates it, with the
// mode and owner the data directory needs (0700, or 0750 for group access).
// Extract reads r to its end, so that a reader that verifies a checksum at
// EOF gets to verify it.
//
// Every entry name must stay inside dir: absolute names, names with a ".."
// component, and names longer than 4096 bytes (or with a component longer
// than 255) are refused, and no entry is written through a symlink, whether
// the archive made it or not: each parent directory is checked to be a real
// directory, and every file-system call goes through an os.Root on dir, so
// that nothing outside dir is touched even if dir changes meanwhile. Regular
// files, directories and hard links to earlier regular files are extracted;
// symbolic links only with opts.AllowSymlinks; device files, FIFOs, sparse
// files and other types are refused. A PAX global header is skipped.
//
// Files and directories keep the permission bits of their entries, without
// setuid, setgid and sticky bits; directories a path implies without an
// entry get 0700, and a directory's mode is set once everything is written
// into it. dir itself keeps its mode, whatever a "./" entry says. Owners
// and modification times are not restored: the files belong to the user
// running Extract, and PostgreSQL does not use their times.
//
// A file's data must be exactly as long as its header says, and the archive
// must end with its end-of-archive marker (two zero blocks), followed only
// by zero padding: a truncated archive is an error even when it is cut
// between entries. Unless opts.NoSync, every file and every directory, dir
// included, is fsynced before Extract returns, so that the data directory is
// durable before PostgreSQL starts on it; making dir's own entry in its
// parent durable is the caller's job. Files are fsynced by a few goroutines
// while extraction goes on, all of which have ended when Extract returns.
//
// Memory stays bounded: file data streams through one fixed buffer, and at
// most a few written files wait for their fsync, open; what grows with the
// archive is a map of its directories, which PostgreSQL has few of.
//
// Errors name the entry and what was wrong with it; those caused by the
// archive wrap ErrBadArchive. On error, what was extracted so far stays in
// dir, possibly with a partly written file: the caller removes dir. The
// stats count what was made up to the error.
func Extract(ctx context.Context, r io.Reader, dir string, opts ExtractOptions) (ExtractStats, error) {
	t, err := NewTree(dir, opts)
	if err != nil {
		return ExtractStats{}, err
	}
	stats, err := t.Extract(ctx, r)
	if cerr := t.Close(ctx); err == nil {
		err = cerr
	}
	return stats, err
}

// Tree extracts several tar archives into one directory, as Extract does
// one: the parts of a base backup's archive, which Extract may take
// concurrently. Which of two entries of the same name in different
// archives wins is undefined, and a hard link must name a file of its own
// archive.
type Tree struct {
	root *os.Root
	opts ExtractOptions
	sync *syncer

	mu sync.Mutex
	// dirs holds every directory made or found as a real one (never a
	// symlink) under the root, by cleaned name, with the permission bits
	// to set at the end; "." is the root.
	dirs   map[string]fs.FileMode
	failed bool
}

// NewTree opens dir, which must exist and be empty, for Extract.
func NewTree(dir string, opts ExtractOptions) (*Tree, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open the target directory: %w (create it, empty, before extracting)", err)
	}
	if err := checkEmpty(root, dir); err != nil {
		root.Close()
		return nil, err
	}
	return &Tree{root: root, opts: opts, sync: newSyncer(opts.NoSync), dirs: map[string]fs.FileMode{".": 0}}, nil
}

// Extract writes one tar archive into the tree, as the function Extract
// does.
func (t *Tree) Extract(ctx context.Context, r io.Reader) (ExtractStats, error) {
	x := t.extractor(ctx, r)
	err := x.entries()
	if err != nil {
		t.fail()
	}
	return x.stats, err
}

// extractAgainOnError is Extract for an archive whose download may fail
// and be tried again: on error, the files and links it made are removed,
// so that the same archive can be extracted into the tree once more, and
// the tree is not marked failed. Directories stay; the next attempt finds
// them. Call abandon after the last failed attempt.
func (t *Tree) extractAgainOnError(ctx context.Context, r io.Reader) (ExtractStats, error) {
	x := t.extractor(ctx, r)
	err := x.entries()
	if err == nil {
		return x.stats, nil
	}
	for _, name := range x.made {
		if rerr := t.root.Remove(name); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			t.fail()
			return x.stats, fmt.Errorf("%w; and removing what the attempt extracted failed: %v", err, rerr)
		}
	}
	return x.stats, err
}

// fail marks the tree failed, as a failed Extract does, so that Close
// leaves the directories' modes alone.
func (t *Tree) fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

func (t *Tree) extractor(ctx context.Context, r io.Reader) *extractor {
	cr := &countingReader{r: r}
	return &extractor{ctx: ctx, t: t, cr: cr, tr: tar.NewReader(cr), buf: make([]byte, extractBuf)}
}

// Close sets the directories' modes and syncs them, unless an Extract
// failed, and returns once every file is synced and closed. Call it once,
// after every Extract has returned.
func (t *Tree) Close(ctx context.Context) error {
	var err error
	if !t.failed {
		err = t.finishDirs(ctx)
	}
	if serr := t.sync.wait(); err == nil {
		err = serr
	}
	t.root.Close()
	return err
}

// checkEmpty makes sure the target directory holds nothing.
func checkEmpty(root *os.Root, dir string) error {
	d, err := root.Open(".")
	if err != nil {
		return fmt.Errorf("open the target directory: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return fmt.Errorf("read the target directory %s: %w", dir, err)
	}
	return fmt.Errorf("target directory %s is not empty (it holds %s): extract into an empty directory", dir, names[0])
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	tail := p[:n]
	if len(tail) > 2*tarBlock {
		tail = tail[len(tail)-2*tarBlock:]
	}
	i := len(tail) - 1
	for i >= 0 && tail[i] == 0 {
		i--
	}
	switch {
	case i >= 0:
		c.zeros = len(tail) - 1 - i
	case n >= 2*tarBlock:
		c.zeros = 2 * tarBlock
	default:
		c.zeros = min(c.zeros+n, 2*tarBlock)
	}
	return n, err
}

// extractor extracts one archive into a tree.
type extractor struct {
	ctx   context.Context
	t     *Tree
	cr    *countingReader
	tr    *tar.Reader
	buf   []byte
	stats ExtractStats
	// made names every file and link this archive created, for
	// extractAgainOnError to remove.
	made []string
}

// badEntry is an error about the entry named name (as the archive spells
// it) that wraps ErrBadArchive.
func badEntry(name, format string, args ...any) error {
	return fmt.Errorf("%w: entry %s: %s", ErrBadArchive, quoted(name), fmt.Sprintf(format, args...))
}

// quoted quotes a name from the archive for an error, cut short if it is
// long: archive/tar lets a name be up to 1 MiB.
func quoted(name string) string {
	const max = 200
	if len(name) <= max {
		return strconv.Quote(name)
	}
	return fmt.Sprintf("%q… (%d bytes)", name[:max], len(name))
}

// after describes the place in the archive after the entry prev.
func after(prev string, offset int64) string {
	if prev == "" {
		return fmt.Sprintf("at the start of the archive (offset %d)", offset)
	}
	return fmt.Sprintf("after entry %s (offset %d)", quoted(prev), offset)
}

// entries extracts every entry up to the end of the archive and reads the
// rest of the stream.
func (x *extractor) entries() error {
	prev := ""
	for {
		if err := x.ctx.Err(); err != nil {
			return fmt.Errorf("extract %s: %w", after(prev, x.cr.n), err)
		}
		// Everything before the next header is headers and data padded to
		// whole blocks, except the data of the last entry, all of which
		// was read: the next header starts at the next block boundary.
		mark := x.cr.n
		start := mark + (-mark)&(tarBlock-1)
		hdr, err := x.tr.Next()
		if errors.Is(err, io.EOF) {
			return x.end(prev, start)
		}
		// With GODEBUG=tarinsecurepath=0 Next flags names we check anyway.
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && hdr != nil) {
			switch {
			case endedEarly(err):
				return fmt.Errorf("%w: the archive ends inside a header %s: it is truncated", ErrBadArchive, after(prev, start))
			case errors.Is(err, tar.ErrHeader), errors.Is(err, tar.ErrFieldTooLong):
				return fmt.Errorf("%w: corrupt tar header %s: %v", ErrBadArchive, after(prev, start), err)
			}
			return fmt.Errorf("read the tar header %s: %w", after(prev, start), err)
		}
		if err := x.entry(hdr); err != nil {
			return err
		}
		prev = hdr.Name
	}
}

// end checks that the archive ended with its end-of-archive marker at
// offset start, not merely with the stream, and that only zero padding
// follows it, reading the stream to its end.
func (x *extractor) end(prev string, start int64) error {
	// archive/tar also ends quietly at a stream that stops between
	// entries, after one zero block or inside the padding of the last
	// entry's data: only two zero blocks where the next header would be
	// are the marker.
	if x.cr.n != start+2*tarBlock || x.cr.zeros < 2*tarBlock {
		return fmt.Errorf("%w: the archive ends without its end-of-archive marker %s: it is truncated", ErrBadArchive, after(prev, start))
	}
	for {
		if err := x.ctx.Err(); err != nil {
			return fmt.Errorf("read past the end of the archive: %w", err)
		}
		off := x.cr.n
		n, err := x.cr.Read(x.buf)
		if i := slices.IndexFunc(x.buf[:n], func(b byte) bool { return b != 0 }); i >= 0 {
			return fmt.Errorf("%w: data after the end-of-archive marker, at offset %d", ErrBadArchive, off+int64(i))
		}
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return fmt.Errorf("read past the end of the archive: %w", err)
		}
	}
}

// entry extracts one entry.
func (x *extractor) entry(hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // PAX records for the whole archive; no file
	}
	name, err := cleanEntryName(hdr.Name)
	if err != nil {
		return badEntry(hdr.Name, "%v", err)
	}
	if hdr.Typeflag != tar.TypeDir && strings.HasSuffix(hdr.Name, "/") {
		return badEntry(hdr.Name, "the name ends in / but the entry is not a directory (type %q)", hdr.Typeflag)
	}
	perm := fs.FileMode(hdr.Mode & 0o777) // no setuid, setgid or sticky bit
	switch hdr.Typeflag {
	case tar.TypeReg:
		return x.file(hdr, name, perm)
	case tar.TypeDir:
		return x.dir(hdr, name, perm)
	case tar.TypeSymlink:
		return x.symlink(hdr, name)
	case tar.TypeLink:
		return x.hardLink(hdr, name)
	case tar.TypeChar, tar.TypeBlock:
		return badEntry(hdr.Name, "device files are refused")
	case tar.TypeFifo:
		return badEntry(hdr.Name, "FIFOs are refused")
	case tar.TypeGNUSparse:
		return badEntry(hdr.Name, "GNU sparse files are refused; PostgreSQL does not write them")
	}
	return badEntry(hdr.Name, "entries of type %q are refused", hdr.Typeflag)
}

// cleanEntryName returns the slash-separated name, relative to the target
// directory, that an entry named raw writes: "." for the directory itself.
func cleanEntryName(raw string) (string, error) {
	switch {
	case raw == "":
		return "", errors.New("the name is empty")
	case strings.IndexByte(raw, 0) >= 0:
		return "", errors.New("the name holds a NUL byte")
	case len(raw) > maxEntryName:
		return "", fmt.Errorf("the name is %d bytes long, more than %d", len(raw), maxEntryName)
	case strings.HasPrefix(raw, "/"):
		return "", errors.New("the name is absolute; entries must stay inside the target directory")
	}
	for c := range strings.SplitSeq(raw, "/") {
		if c == ".." {
			return "", errors.New(`the name has a ".." component; entries must stay inside the target directory`)
		}
		if len(c) > maxNameComponent {
			return "", fmt.Errorf("a component of the name is %d bytes long, more than %d", len(c), maxNameComponent)
		}
	}
	name := path.Clean(raw)
	if name != "." && !filepath.IsLocal(filepath.FromSlash(name)) {
		return "", errors.New("the name leaves the target directory")
	}
	return name, nil
}

// parents makes sure every parent directory of name is a real directory
// under the root, never a symlink, making those that do not exist with
// mode 0700 when create is set. The tree's lock must be held.
func (x *extractor) parents(entry, name string, create bool) error {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		p := name[:i]
		if _, ok := x.t.dirs[p]; ok {
			continue
		}
		fi, err := x.t.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) && create:
			if err := x.t.root.Mkdir(p, 0o700); err != nil {
				return fmt.Errorf("extract entry %q: make directory %s: %w", entry, p, err)
			}
			x.t.dirs[p] = 0o700
			x.stats.Dirs++
		case errors.Is(err, fs.ErrNotExist):
			return badEntry(entry, "%s does not exist", p)
		case err != nil:
			return fmt.Errorf("extract entry %q: %w", entry, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return badEntry(entry, "the path goes through the symlink %s; nothing is written through a symlink", p)
		case !fi.IsDir():
			return badEntry(entry, "the path goes through %s, which is not a directory", p)
		default:
			x.t.dirs[p] = fi.Mode().Perm()
		}
	}
	return nil
}

// existing explains why name cannot be made: an earlier entry made it.
func (x *extractor) existing(entry, name string) error {
	fi, err := x.t.root.Lstat(name)
	if err != nil {
		return fmt.Errorf("extract entry %q: %w", entry, err)
	}
	return badEntry(entry, "duplicate name: %s is already a %s from an earlier entry", name, fileKind(fi.Mode()))
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	}
	return "special file"
}

// file writes a regular file entry: created exclusively, its data streamed
// through the buffer, its mode set, synced and closed.
func (x *extractor) file(hdr *tar.Header, name string, perm fs.FileMode) error {
	if name == "." {
		return badEntry(hdr.Name, "a regular file cannot replace the target directory")
	}
	x.t.mu.Lock()
	err := x.parents(hdr.Name, name, true)
	x.t.mu.Unlock()
	if err != nil {
		return err
	}
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
	f, err := x.t.root.OpenFile(name, flags, 0o600)
	if errors.Is(err, fs.ErrExist) {
		if err := x.replace(hdr.Name, name); err != nil {
			return err
		}
		f, err = x.t.root.OpenFile(name, flags, 0o600)
	}
	if err != nil {
		return fmt.Errorf("extract entry %q: %w", hdr.Name, err)
	}
	x.made = append(x.made, name)
	n, err := x.copyData(hdr, f)
	x.stats.Bytes += n
	if err == nil {
		if err = f.Chmod(perm); err != nil {
			err = fmt.Errorf("extract entry %q: %w", hdr.Name, err)
		}
	}
	if err != nil {
		_ = f.Close()
		return err
	}
	if err := x.t.sync.add(f, fmt.Sprintf("entry %q", hdr.Name)); err != nil {
		return err
	}
	x.stats.Files++
	return nil
}

// replace removes the earlier regular file name so that a later entry can
// take its place, if the options allow it.
func (x *extractor) replace(entry, name string) error {
	fi, err := x.t.root.Lstat(name)
	if err != nil {
		return fmt.Errorf("extract entry %q: %w", entry, err)
	}
	if !fi.Mode().IsRegular() {
		return x.existing(entry, name)
	}
	if !x.t.opts.ReplaceFiles {
		return badEntry(entry, "duplicate name: an earlier entry wrote %s (set ReplaceFiles to let the later one win)", name)
	}
	if err := x.t.root.Remove(name); err != nil {
		return fmt.Errorf("extract entry %q: replace the earlier file: %w", entry, err)
	}
	return nil
}

// copyData streams the entry's data into f: exactly hdr.Size bytes.
func (x *extractor) copyData(hdr *tar.Header, f *os.File) (int64, error) {
	var done int64
	for done < hdr.Size {
		if err := x.ctx.Err(); err != nil {
			return done, fmt.Errorf("extract entry %q: %w", hdr.Name, err)
		}
		chunk := x.buf[:min(int64(len(x.buf)), hdr.Size-done)]
		n, rerr := io.ReadFull(x.tr, chunk)
		if n > 0 {
			if _, err := f.Write(chunk[:n]); err != nil {
				return done, fmt.Errorf("extract entry %q: %w", hdr.Name, err)
			}
			done += int64(n)
		}
		switch {
		case rerr == io.EOF || endedEarly(rerr):
			return done, badEntry(hdr.Name, "the archive ends after %d of the entry's %d bytes: it is truncated", done, hdr.Size)
		case rerr != nil:
			return done, fmt.Errorf("extract entry %q: read: %w", hdr.Name, rerr)
		}
	}
	return done, nil
}

// endedEarly tells the stream ending inside a header or an entry, which
// archive/tar reports as io.ErrUnexpectedEOF itself, from the reader
// failing with an error that wraps it (net/http's for a body shorter than
// its Content-Length): that is a failed download, not a damaged archive.
func endedEarly(err error) bool {
	return err == io.ErrUnexpectedEOF
}

// dir makes a directory entry, or takes the mode of a repeated one; modes
// are set at the end.
func (x *extractor) dir(hdr *tar.Header, name string, perm fs.FileMode) error {
	if name == "." {
		return nil // the caller chose the target directory's mode
	}
	x.t.mu.Lock()
	defer x.t.mu.Unlock()
	if err := x.parents(hdr.Name, name, true); err != nil {
		return err
	}
	if _, ok := x.t.dirs[name]; ok {
		x.t.dirs[name] = perm
		return nil
	}
	if err := x.t.root.Mkdir(name, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return x.existing(hdr.Name, name)
		}
		return fmt.Errorf("extract entry %q: %w", hdr.Name, err)
	}
	x.t.dirs[name] = perm
	x.stats.Dirs++
	return nil
}

// symlink makes a symbolic link entry, if the options allow it. Its target
// is not checked: nothing is ever written through it.
func (x *extractor) symlink(hdr *tar.Header, name string) error {
	target := hdr.Linkname
	switch {
	case !x.t.opts.AllowSymlinks:
		return badEntry(hdr.Name, "a symlink to %s: symlinks are refused unless AllowSymlinks is set (walship's backups carry a tablespace_map instead)", quoted(target))
	case target == "":
		return badEntry(hdr.Name, "a symlink without a target")
	case strings.IndexByte(target, 0) >= 0:
		return badEntry(hdr.Name, "the symlink's target holds a NUL byte")
	case len(target) > maxEntryName:
		return badEntry(hdr.Name, "the symlink's target is %d bytes long, more than %d", len(target), maxEntryName)
	case name == ".":
		return badEntry(hdr.Name, "a symlink cannot replace the target directory")
	}
	x.t.mu.Lock()
	defer x.t.mu.Unlock()
	if err := x.parents(hdr.Name, name, true); err != nil {
		return err
	}
	if err := x.t.root.Symlink(target, name); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return x.existing(hdr.Name, name)
		}
		return fmt.Errorf("extract entry %q: %w", hdr.Name, err)
	}
	x.made = append(x.made, name)
	x.stats.Symlinks++
	return nil
}

// hardLink links name to an earlier regular file of the archive.
func (x *extractor) hardLink(hdr *tar.Header, name string) error {
	target, err := cleanEntryName(hdr.Linkname)
	if err != nil {
		return badEntry(hdr.Name, "a hard link to %s: %v", quoted(hdr.Linkname), err)
	}
	if name == "." || target == "." {
		return badEntry(hdr.Name, "a hard link to %s: only regular files may be linked", quoted(hdr.Linkname))
	}
	x.t.mu.Lock()
	defer x.t.mu.Unlock()
	if err := x.parents(hdr.Name, target, false); err != nil {
		return err
	}
	fi, err := x.t.root.Lstat(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return badEntry(hdr.Name, "a hard link to %s, which no earlier entry made", quoted(hdr.Linkname))
	case err != nil:
		return fmt.Errorf("extract entry %q: %w", hdr.Name, err)
	case !fi.Mode().IsRegular():
		return badEntry(hdr.Name, "a hard link to %s, which is a %s: only regular files may be linked", quoted(hdr.Linkname), fileKind(fi.Mode()))
	}
	if err := x.parents(hdr.Name, name, true); err != nil {
		return err
	}
	if err := x.t.root.Link(target, name); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return x.existing(hdr.Name, name)
		}
		return fmt.Errorf("extract entry %q: %w", hdr.Name, err)
	}
	x.made = append(x.made, name)
	x.stats.HardLinks++
	return nil
}

// finishDirs sets every directory's mode, deepest first so that a mode
// without write or search permission comes after everything beneath, and
// has it synced.
func (t *Tree) finishDirs(ctx context.Context) error {
	names := slices.Collect(maps.Keys(t.dirs))
	slices.SortFunc(names, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("finish directory %s: %w", name, err)
		}
		if err := t.finishDir(name); err != nil {
			return err
		}
	}
	return nil
}

func (t *Tree) finishDir(name string) error {
	if name == "." && t.opts.NoSync {
		return nil
	}
	d, err := t.root.Open(name)
	if err != nil {
		return fmt.Errorf("finish directory %s: %w", name, err)
	}
	if name != "." {
		if err := d.Chmod(t.dirs[name]); err != nil {
			_ = d.Close()
			return fmt.Errorf("finish directory %s: %w", name, err)
		}
	}
	return t.sync.add(d, "directory "+name)
}
