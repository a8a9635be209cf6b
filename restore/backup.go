package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// DefaultParallel is how many archive parts a restore extracts at once by
// default: enough to keep downloads, decompression and file creation busy
// on a few cores.
const DefaultParallel = 4

// ExtractBackupOptions tunes ExtractBackup.
type ExtractBackupOptions struct {
	// Parallel is how many archive parts are downloaded and extracted at
	// once; DefaultParallel if 0.
	Parallel int
	// Progress, if not nil, counts the archives' bytes as they are
	// extracted; its total is set to the backup's size.
	Progress *progress.Meter
	// Log, if not nil, hears of downloads that failed and are tried again.
	Log *slog.Logger
}

// ExtractBackup writes base backup b from repo into dir, which must exist and
// be empty: base.tar into dir, each tablespace archive into tablespaces[oid]
// (which must exist and be empty; a tablespace missing from the map goes
// back to its original location), and the server's backup_manifest into
// dir, so that pg_verifybackup can check the result. The
// tablespace_map is rewritten to the tablespaces' new locations;
// backup_label is kept byte for byte. Every object's checksum is verified to
// its last byte. A download that fails (a reset connection, a body cut
// short, an error answer the store's client did not retry away) is tried
// again, DefaultAttempts times in all, an archive part from its start
// after what it extracted is removed; a damaged object or archive is not.
// On error, what was written stays: the caller removes it.
func ExtractBackup(ctx context.Context, repo *catalog.Repo, b catalog.Backup, dir string, tablespaces map[uint32]string, opts ExtractBackupOptions) error {
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Progress != nil {
		var total int64
		for _, parts := range b.Archives() {
			for _, p := range parts {
				total += p.Size
			}
		}
		opts.Progress.SetTotal(total)
	}
	locations := map[uint32]string{}
	type job struct {
		obj  catalog.BackupObject
		tree *Tree
	}
	var jobs []job
	var trees []*Tree
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	closeTrees := func() error {
		var first error
		for _, t := range trees {
			if err := t.Close(ctx); first == nil {
				first = err
			}
		}
		return first
	}
	for _, parts := range b.Archives() {
		o := parts[0]
		target := dir
		if o.OID != 0 {
			target = o.Location
			if t, ok := tablespaces[o.OID]; ok {
				target = t
			}
			if !filepath.IsAbs(target) {
				closeTrees()
				return fmt.Errorf("backup %s: tablespace %d: location %q is not absolute; map it with OLD=NEW", b.ID, o.OID, target)
			}
			locations[o.OID] = target
		}
		t, err := NewTree(target, ExtractOptions{})
		if err != nil {
			closeTrees()
			return fmt.Errorf("extract backup %s into %s: %w", b.ID, target, err)
		}
		trees = append(trees, t)
		for _, p := range parts {
			jobs = append(jobs, job{p, t})
		}
	}
	next := make(chan job)
	errs := make(chan error, parallel)
	var wg sync.WaitGroup
	for range min(parallel, len(jobs)) {
		wg.Go(func() {
			for j := range next {
				if err := extractObject(ctx, repo, catalog.BackupObjectKey(b.ID, j.obj.Name), j.tree, opts); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
	err := func() error {
		defer func() { close(next); wg.Wait() }()
		for _, j := range jobs {
			select {
			case next <- j:
			case err := <-errs:
				return err
			}
		}
		return nil
	}()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if cerr := closeTrees(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if slices.ContainsFunc(b.Objects, func(o catalog.BackupObject) bool { return o.Name == catalog.ManifestName }) {
		if err := copyObject(ctx, repo, catalog.BackupObjectKey(b.ID, catalog.ManifestName), filepath.Join(dir, catalog.ManifestName), opts.Log); err != nil {
			return err
		}
	}
	if len(locations) > 0 {
		if err := rewriteTablespaceMap(filepath.Join(dir, "tablespace_map"), locations); err != nil {
			return fmt.Errorf("backup %s: %w", b.ID, err)
		}
		// The links PostgreSQL makes from tablespace_map at startup, made
		// now so that pg_verifybackup finds the tablespaces too.
		for oid, loc := range locations {
			link := filepath.Join(dir, "pg_tblspc", strconv.FormatUint(uint64(oid), 10))
			if err := os.Symlink(loc, link); err != nil {
				return fmt.Errorf("backup %s: link tablespace %d: %w", b.ID, oid, err)
			}
		}
	}
	return nil
}

// extractObject streams one archive object into tree, trying a failed
// download again from the start. Extract reads the object to its end, so
// its checksum is verified.
func extractObject(ctx context.Context, repo *catalog.Repo, key string, tree *Tree, opts ExtractBackupOptions) error {
	err := downloadRetrying(ctx, opts.Log, key, func() (*download, error) {
		rc, err := repo.Open(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", key, err)
		}
		defer rc.Close()
		d := &download{r: rc, meter: opts.Progress}
		if _, err := tree.extractAgainOnError(ctx, d); err != nil {
			return d, fmt.Errorf("extract %s: %w", key, err)
		}
		return d, nil
	})
	if err != nil {
		tree.fail()
	}
	return err
}

func copyObject(ctx context.Context, repo *catalog.Repo, key, dest string, log *slog.Logger) error {
	return downloadRetrying(ctx, log, key, func() (*download, error) {
		rc, err := repo.Open(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", key, err)
		}
		defer rc.Close()
		d := &download{r: rc}
		return d, writeAtomic(dest, func(f *os.File) error {
			_, err := io.Copy(f, d)
			return err
		})
	})
}

// downloadRetrying runs attempt until it succeeds, fails for a reason other
// than the download, or has failed DefaultAttempts times, waiting
// DefaultBackoff, then twice as long each time, in between. attempt returns
// the download it read, if it opened one, and leaves nothing of a failed
// attempt behind.
func downloadRetrying(ctx context.Context, log *slog.Logger, key string, attempt func() (*download, error)) error {
	var d *download
	return retrying(ctx, log, "download failed; trying again", key, DefaultAttempts, DefaultBackoff,
		func() error {
			var err error
			d, err = attempt()
			if err != nil && d != nil && d.meter != nil {
				d.meter.Add(-d.n)
			}
			return err
		},
		func(err error) bool {
			cause := err
			if d != nil {
				cause = d.err
			}
			return cause != nil && transient(cause) && !errors.Is(cause, storage.ErrNotExist)
		})
}

// download reads an object, counting its bytes into meter (if not nil) and
// keeping the first error other than io.EOF that the object's reader gave,
// so that a failed download can be told from a damaged archive or a local
// failure.
type download struct {
	r     io.Reader
	meter *progress.Meter
	n     int64
	err   error
}

func (d *download) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.n += int64(n)
	if d.meter != nil {
		d.meter.Add(int64(n))
	}
	if err != nil && err != io.EOF && d.err == nil {
		d.err = err
	}
	return n, err
}

// rewriteTablespaceMap points tablespace_map's entries at new locations. The
// file has one "oid path" entry per line; a backslash, carriage return or
// newline in a path is preceded by a backslash (PostgreSQL's xlog.c).
func rewriteTablespaceMap(path string, locations map[uint32]string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tablespace_map: %w (a backup with tablespaces has one)", err)
	}
	var out bytes.Buffer
	seen := map[uint32]bool{}
	for _, entry := range splitMap(old) {
		oidText, _, ok := strings.Cut(entry, " ")
		oid, err := strconv.ParseUint(oidText, 10, 32)
		if !ok || err != nil {
			return fmt.Errorf("tablespace_map: entry %q: want \"oid path\"", entry)
		}
		if loc, ok := locations[uint32(oid)]; ok {
			entry = oidText + " " + escapeMapPath(loc)
			seen[uint32(oid)] = true
		}
		out.WriteString(entry + "\n")
	}
	for oid := range locations {
		if !seen[oid] {
			return fmt.Errorf("tablespace_map has no entry for tablespace %d", oid)
		}
	}
	return writeAtomic(path, func(f *os.File) error {
		_, err := f.Write(out.Bytes())
		return err
	})
}

// splitMap splits tablespace_map into its entries, raw (escapes kept), at
// the newlines that are not escaped.
func splitMap(b []byte) []string {
	var entries []string
	start := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++ // the next byte is escaped
		case '\n':
			entries = append(entries, string(b[start:i]))
			start = i + 1
		}
	}
	if start < len(b) {
		entries = append(entries, string(b[start:]))
	}
	return entries
}

func escapeMapPath(p string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", "\\\n", "\r", "\\\r").Replace(p)
}
