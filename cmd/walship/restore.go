package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/restore"
)

func (e *env) restoreCommand() *cli.Command {
	flags := append([]cli.Flag{
		targetDirFlag(),
		&cli.StringFlag{Name: "to-time", EnvVars: []string{"WALSHIP_TO_TIME"}, Usage: "recover to `TIME`: RFC 3339 (2026-11-28T10:15:00.123456Z) or PostgreSQL's form (2026-11-28 10:15:00+00); a zone is required"},
		&cli.StringFlag{Name: "to-lsn", EnvVars: []string{"WALSHIP_TO_LSN"}, Usage: "recover to `LSN` (X/X)"},
		&cli.StringFlag{Name: "to-xid", EnvVars: []string{"WALSHIP_TO_XID"}, Usage: "recover to the commit or abort of transaction `XID`"},
		&cli.StringFlag{Name: "to-name", EnvVars: []string{"WALSHIP_TO_NAME"}, Usage: "recover to the restore point `NAME` (pg_create_restore_point)"},
		&cli.BoolFlag{Name: "to-immediate", EnvVars: []string{"WALSHIP_TO_IMMEDIATE"}, Usage: "recover only to the backup's consistency point"},
		&cli.BoolFlag{Name: "exclusive", EnvVars: []string{"WALSHIP_EXCLUSIVE"}, Usage: "stop just before the target instead of just after it"},
		&cli.StringFlag{Name: "backup", EnvVars: []string{"WALSHIP_BACKUP"}, Usage: "restore backup `ID` instead of the newest one that reaches the target"},
		&cli.StringFlag{Name: "timeline", EnvVars: []string{"WALSHIP_TIMELINE"}, Usage: "recover along timeline `TLI` (decimal, or 0x hex) instead of the one with the newest WAL"},
		&cli.StringFlag{Name: "target-action", EnvVars: []string{"WALSHIP_TARGET_ACTION"}, Value: "promote", Usage: "what the server does at the target: promote, pause or shutdown"},
		tablespaceMapFlag(),
		parallelFlag(),
		&cli.BoolFlag{Name: "keep-archiving", EnvVars: []string{"WALSHIP_KEEP_ARCHIVING"}, Usage: "keep the source's archive settings (by default the restored node does not archive, so it never writes into the source's repository)"},
		&cli.BoolFlag{Name: "dry-run", EnvVars: []string{"WALSHIP_RESTORE_DRY_RUN"}, Usage: "print the plan and change nothing"},
		&cli.BoolFlag{Name: "start", EnvVars: []string{"WALSHIP_START"}, Usage: "run PostgreSQL until recovery reaches the target and report where it ended (not as root)"},
		&cli.StringFlag{Name: "pg-bin", EnvVars: []string{"WALSHIP_PG_BIN"}, TakesFile: true, Usage: "`DIR` of the PostgreSQL binaries for --start (default: PATH)"},
		&cli.BoolFlag{Name: "keep-running", EnvVars: []string{"WALSHIP_KEEP_RUNNING"}, Usage: "with --start, leave the server running on its own configuration (default: stop it once recovered)"},
	}, repoFlags()...)
	return &cli.Command{
		Name:  "restore",
		Usage: "restore a backup into a new data directory and set up recovery to a target",
		Description: "Chooses the newest backup that reaches the target along the target's timeline, checks that the WAL\n" +
			"recovery needs is in the repository (before downloading anything), extracts the backup into\n" +
			"--target-dir and writes recovery.signal and the recovery settings into postgresql.auto.conf, with a\n" +
			"restore_command that runs this walship by absolute path with the repository spelled out:\n\n" +
			"  walship --repo s3://bucket/pg restore --target-dir /var/lib/postgresql/16/restored --to-time '2026-11-28 10:15:00+00'\n\n" +
			"Start PostgreSQL on the directory to recover. Storage credentials reach restore_command through the\n" +
			"environment of the server's user (AWS_* variables, ~/.aws/credentials, an instance or container role):\n" +
			"they are never written into the configuration. The latest state is the default target.",
		Flags: flags,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if n := c.Int("parallel"); n < 1 || n > 64 {
				return usagef("--parallel %d: want 1 to 64", n)
			}
			target, err := parseTarget(c)
			if err != nil {
				return err
			}
			dir, tablespaces, err := targetDirs(c)
			if err != nil {
				return err
			}
			if c.Bool("keep-running") && !c.Bool("start") {
				return usagef("--keep-running needs --start")
			}
			if c.Bool("start") && c.Bool("dry-run") {
				return usagef("--start and --dry-run: choose one")
			}
			if c.Bool("start") && os.Geteuid() == 0 {
				return usagef("--start: PostgreSQL refuses to run as root; run walship as the user that will own %s (sudo -u postgres walship ...), or leave out --start", c.String("target-dir"))
			}
			action := c.String("target-action")
			switch action {
			case "promote", "pause", "shutdown":
			default:
				return usagef("--target-action %q: want promote, pause or shutdown", action)
			}
			fetchCmd, err := restoreCommand(c)
			if err != nil {
				return err
			}
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			if c.Bool("dry-run") {
				k := target.Kind
				inv, err := restore.LoadInventory(c.Context, repo, k == restore.ToTime || k == restore.ToXID || k == restore.ToName)
				if err == nil {
					err = inv.Encrypted()
				}
				if err != nil {
					return err
				}
				plan, err := restore.PlanRestore(inv, target)
				if err != nil {
					return err
				}
				printPlan(c.App.Writer, plan, dir)
				return nil
			}
			meter := progress.Start("restore", 0, e.stderr, e.log)
			plan, err := restore.Restore(c.Context, repo, restore.Options{
				Dir:         dir,
				Target:      target,
				Tablespaces: tablespaces,
				Parallel:    c.Int("parallel"),
				Progress:    meter,
				Recovery:    restore.Recovery{Action: action, KeepArchiving: c.Bool("keep-archiving")},
				// The tip from pieces for the target timeline only; both
				// spelled out, so that WALSHIP_FETCH_* variables in the
				// server's environment cannot change them.
				RestoreCommand: func(tli wal.TimeLineID) string {
					return fetchCmd("--tip-timeline", strconv.FormatUint(uint64(tli), 10), "--no-pieces=false")
				},
				Log: e.log,
			})
			meter.Stop()
			if err != nil {
				return err
			}
			printPlan(c.App.Writer, plan, dir)
			if !c.Bool("start") {
				return nil
			}
			out, err := restore.Start(c.Context, restore.StartOptions{
				Dir: dir, BinDir: c.String("pg-bin"), Action: action, KeepRunning: c.Bool("keep-running"), Log: e.log,
			})
			if err != nil {
				return err
			}
			printOutcome(c.App.Writer, out)
			return nil
		},
	}
}

func printOutcome(w io.Writer, o restore.Outcome) {
	fmt.Fprintf(w, "recovered to %s on timeline %d\n", o.LSN, o.Timeline)
	if !o.Time.IsZero() {
		fmt.Fprintf(w, "last transaction replayed at %s\n", o.Time.Format(time.RFC3339Nano))
	}
	if o.Running {
		fmt.Fprintln(w, "server running")
	} else {
		fmt.Fprintln(w, "server stopped")
	}
}

func printPlan(w io.Writer, p restore.Plan, dir string) {
	fmt.Fprintf(w, "backup    %s (ends at %s on timeline %d)\n", p.Backup.ID, p.Backup.EndLSN, p.Backup.EndTLI)
	fmt.Fprintf(w, "timeline  %d\n", p.Timeline)
	fmt.Fprintf(w, "stop      %s\n", p.Stop)
	fmt.Fprintf(w, "WAL to    %s\n", p.WALEnd)
	fmt.Fprintf(w, "directory %s\n", dir)
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note      %s\n", n)
	}
}

// parseTarget reads the target flags: at most one of them.
func parseTarget(c *cli.Context) (restore.Target, error) {
	t := restore.Target{Kind: restore.Latest, Exclusive: c.Bool("exclusive"), Backup: c.String("backup")}
	var set []string
	for _, name := range []string{"to-time", "to-lsn", "to-xid", "to-name", "to-immediate"} {
		if c.IsSet(name) {
			set = append(set, "--"+name)
		}
	}
	if len(set) > 1 {
		return t, usagef("%s: choose one recovery target", strings.Join(set, " and "))
	}
	var err error
	switch {
	case c.IsSet("to-time"):
		t.Kind = restore.ToTime
		if t.Time, err = parseTargetTime(c.String("to-time")); err != nil {
			return t, usagef("--to-time %q: %v", c.String("to-time"), err)
		}
	case c.IsSet("to-lsn"):
		t.Kind = restore.ToLSN
		if t.LSN, err = wal.ParseLSN(c.String("to-lsn")); err != nil {
			return t, usagef("--to-lsn %q: want X/X, as pg_current_wal_lsn() prints", c.String("to-lsn"))
		}
	case c.IsSet("to-xid"):
		t.Kind = restore.ToXID
		if t.XID, err = strconv.ParseUint(c.String("to-xid"), 10, 64); err != nil || t.XID < 3 {
			return t, usagef("--to-xid %q: want a transaction ID (a decimal number of at least 3)", c.String("to-xid"))
		}
	case c.IsSet("to-name"):
		t.Kind = restore.ToName
		t.Name = c.String("to-name")
		if t.Name == "" || len(t.Name) >= 64 {
			return t, usagef("--to-name %q: want a restore point name of 1 to 63 bytes", t.Name)
		}
	case c.Bool("to-immediate"):
		t.Kind = restore.Immediate
	}
	if t.Exclusive && (t.Kind == restore.Latest || t.Kind == restore.Immediate || t.Kind == restore.ToName) {
		return t, usagef("--exclusive applies to --to-time, --to-lsn and --to-xid")
	}
	if s := c.String("timeline"); s != "" {
		v, err := strconv.ParseUint(s, 0, 32)
		if err != nil || v == 0 {
			return t, usagef("--timeline %q: want a timeline number (decimal, or 0x hex)", s)
		}
		t.Timeline = wal.TimeLineID(v)
	}
	return t, nil
}

// targetTimeLayouts are the forms --to-time accepts; each carries a zone.
var targetTimeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999 Z07:00",
	"2006-01-02 15:04:05.999999999 Z07",
	"2006-01-02 15:04:05.999999999 MST",
}

func parseTargetTime(s string) (time.Time, error) {
	for _, layout := range targetTimeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			if layout == targetTimeLayouts[len(targetTimeLayouts)-1] && !strings.HasSuffix(s, "UTC") {
				continue // only UTC among zone abbreviations: others are ambiguous
			}
			// recovery_target_time is written in UTC with a four-digit
			// year, and PostgreSQL has no year 0.
			if y := t.UTC().Year(); y < 1 || y > 9999 {
				return time.Time{}, fmt.Errorf("the year in UTC is %d; want 1 to 9999", y)
			}
			// PostgreSQL's timestamps are microseconds: plan with what
			// recovery will compare.
			return t.Truncate(time.Microsecond), nil
		}
	}
	return time.Time{}, fmt.Errorf("want RFC 3339 (2026-11-28T10:15:00.123Z) or 2026-11-28 10:15:00+00, with a zone offset")
}

// restoreCommand returns a maker of restore_commands for the repository
// this command uses: this binary by absolute path, --repo and the identity
// file spelled out, and the wal-fetch flags given to the maker.
func restoreCommand(c *cli.Context) (func(fetchFlags ...string) string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this walship binary for restore_command: %w", err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return nil, fmt.Errorf("find this walship binary for restore_command: %w", err)
	}
	id := c.String("age-identity-file")
	if id != "" {
		if id, err = filepath.Abs(id); err != nil {
			return nil, usagef("--age-identity-file: %v", err)
		}
	}
	repoURL := c.String("repo")
	return func(fetchFlags ...string) string {
		return restore.RestoreCommand(self, repoURL, id, fetchFlags...)
	}, nil
}

func targetDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "target-dir", EnvVars: []string{"WALSHIP_TARGET_DIR"}, Required: true, TakesFile: true, Usage: "the data `DIR` to create: empty or absent"}
}

func parallelFlag() cli.Flag {
	return &cli.IntFlag{Name: "parallel", EnvVars: []string{"WALSHIP_PARALLEL"}, Value: restore.DefaultParallel, Usage: "archive parts to download and extract at once"}
}

func tablespaceMapFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "tablespace-map", EnvVars: []string{"WALSHIP_TABLESPACE_MAP"}, Usage: "restore a tablespace elsewhere: `OLD=NEW`, OLD its OID or original location, NEW an empty or absent absolute directory; repeat it"}
}

// targetDirs reads --target-dir, made absolute, and --tablespace-map.
func targetDirs(c *cli.Context) (string, map[string]string, error) {
	dir, err := filepath.Abs(c.String("target-dir"))
	if err != nil {
		return "", nil, usagef("--target-dir: %v", err)
	}
	tablespaces := map[string]string{}
	for _, m := range c.StringSlice("tablespace-map") {
		old, dst, ok := strings.Cut(m, "=")
		if !ok || old == "" || dst == "" {
			return "", nil, usagef("--tablespace-map %q: want OLD=NEW, OLD a tablespace's OID or original location", m)
		}
		tablespaces[old] = dst
	}
	return dir, tablespaces, nil
}
