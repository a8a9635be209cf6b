package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// Options say what Restore does.
type Options struct {
	Dir    string // the data directory to create; must be empty or absent
	Target Target
	// Tablespaces moves tablespaces: a tablespace's OID or original
	// location → the empty or absent directory to restore it into.
	Tablespaces map[string]string
	// Recovery holds the action and the archiving choice; the target,
	// timeline and restore_command come from the plan.
	Recovery Recovery
	// RestoreCommand makes the restore_command for the timeline recovery
	// targets.
	RestoreCommand func(tli wal.TimeLineID) string
	// Parallel is how many archive parts are extracted at once;
	// DefaultParallel if 0.
	Parallel int
	// Progress, if not nil, counts the backup's bytes as they are
	// extracted.
	Progress *progress.Meter
	Log      *slog.Logger
}

// Restore plans the restore of opts.Target, extracts the chosen backup into
// opts.Dir and writes its recovery settings, so that PostgreSQL started on
// opts.Dir recovers to the target with WAL from repo. On failure nothing is
// left in the directories it filled.
func Restore(ctx context.Context, repo *catalog.Repo, opts Options) (Plan, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.RestoreCommand == nil {
		return Plan{}, errors.New("restore: no restore_command")
	}
	k := opts.Target.Kind
	inv, err := LoadInventory(ctx, repo, k == ToTime || k == ToXID || k == ToName)
	if err == nil {
		err = inv.Encrypted()
	}
	if err != nil {
		return Plan{}, err
	}
	plan, err := PlanRestore(inv, opts.Target)
	if err != nil {
		return Plan{}, err
	}
	for _, n := range plan.Notes {
		log.Warn(n)
	}
	tablespaces, err := mapTablespaces(plan.Backup, opts.Tablespaces)
	if err != nil {
		return Plan{}, err
	}
	dirs := []string{opts.Dir}
	for _, parts := range plan.Backup.Archives() {
		o := parts[0]
		if o.OID == 0 {
			continue
		}
		d, moved := tablespaces[o.OID]
		if !moved {
			d = o.Location // back where it was: it must be empty too
		}
		dirs = append(dirs, d)
	}
	if err := distinctDirs(dirs); err != nil {
		return Plan{}, err
	}
	var made []string
	for _, d := range dirs {
		created, err := prepareDir(d)
		if err != nil {
			cleanDirs(made)
			return Plan{}, err
		}
		if created {
			made = append(made, d)
		}
	}
	log.Info("restoring", slog.String("backup", plan.Backup.ID), slog.String("target", opts.Target.Kind.String()),
		slog.Any("timeline", plan.Timeline), slog.String("stop", plan.Stop.String()), slog.String("dir", opts.Dir))
	rec := opts.Recovery
	rec.Target = opts.Target
	rec.RestoreCommand = opts.RestoreCommand(plan.Timeline)
	if !rec.Standby {
		// Explicit, so that a stray higher timeline cannot lure recovery
		// away; a standby follows the newest, as failovers need.
		rec.Timeline = plan.Timeline
	}
	switch {
	case rec.Comment != "":
	case rec.Standby:
		rec.Comment = fmt.Sprintf("a standby seeded from backup %s", plan.Backup.ID)
	default:
		rec.Comment = fmt.Sprintf("backup %s, target %s", plan.Backup.ID, describeTarget(opts.Target))
	}
	err = ExtractBackup(ctx, repo, plan.Backup, opts.Dir, tablespaces, ExtractBackupOptions{Parallel: opts.Parallel, Progress: opts.Progress, Log: log})
	if err == nil {
		err = WriteRecovery(opts.Dir, rec)
	}
	if err != nil {
		emptyDirs(dirs)
		cleanDirs(made)
		return Plan{}, err
	}
	return plan, nil
}

func describeTarget(t Target) string {
	switch t.Kind {
	case ToTime:
		return "time " + t.Time.UTC().Format("2006-01-02 15:04:05.999999Z07:00")
	case ToLSN:
		return "LSN " + t.LSN.String()
	case ToXID:
		return "xid " + strconv.FormatUint(t.XID, 10)
	case ToName:
		return "restore point " + strconv.Quote(t.Name)
	}
	return t.Kind.String()
}

// mapTablespaces turns OID-or-location keys into the OIDs of b's
// tablespaces.
func mapTablespaces(b catalog.Backup, m map[string]string) (map[uint32]string, error) {
	out := map[uint32]string{}
	for k, dir := range m {
		if !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("--tablespace-map %s=%s: the new location must be an absolute path", k, dir)
		}
		i := slices.IndexFunc(b.Objects, func(o catalog.BackupObject) bool {
			return o.OID != 0 && (strconv.FormatUint(uint64(o.OID), 10) == k || filepath.Clean(o.Location) == filepath.Clean(k))
		})
		if i < 0 {
			has := "none"
			var known []string
			for _, o := range b.Objects {
				if o.OID != 0 && o.Part == 0 {
					known = append(known, fmt.Sprintf("%d=%s", o.OID, o.Location))
				}
			}
			if len(known) > 0 {
				has = strings.Join(known, ", ")
			}
			return nil, fmt.Errorf("--tablespace-map %s: backup %s has no such tablespace (it has: %s)", k, b.ID, has)
		}
		out[b.Objects[i].OID] = dir
	}
	return out, nil
}

// distinctDirs checks that no directory a restore fills is another or lies
// inside another: two archives extracted into one place would collide.
func distinctDirs(dirs []string) error {
	for i, a := range dirs {
		for _, b := range dirs[:i] {
			ca, cb := filepath.Clean(a), filepath.Clean(b)
			if ca == cb || strings.HasPrefix(ca, cb+string(filepath.Separator)) || strings.HasPrefix(cb, ca+string(filepath.Separator)) {
				return fmt.Errorf("the restore would put two parts of the backup into %s and %s: give the target directory and each tablespace (--tablespace-map) a place of its own", b, a)
			}
		}
	}
	return nil
}

// prepareDir checks that dir is empty, creating it (0700) when absent.
func prepareDir(dir string) (created bool, err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("create %s: %w", dir, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("%s: %w", dir, err)
	case len(entries) > 0:
		return false, fmt.Errorf("%s is not empty (it holds %s); restore into an empty or new directory", dir, entries[0].Name())
	}
	return false, nil
}

// emptyDirs removes what a failed restore wrote into dirs.
func emptyDirs(dirs []string) {
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			_ = os.RemoveAll(filepath.Join(d, e.Name()))
		}
	}
}

// cleanDirs removes the directories a failed restore created.
func cleanDirs(dirs []string) {
	for _, d := range dirs {
		_ = os.RemoveAll(d)
	}
}
