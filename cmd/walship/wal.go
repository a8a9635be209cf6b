package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/restore"
)

// Exit codes of wal-fetch, as PostgreSQL reads restore_command's status: 1
// means "no such file" (the end of the archive), and a status above 125 makes
// the startup process stop instead of ending recovery early.
const (
	exitNotFound     = 1
	exitStopRecovery = 126
)

func (e *env) walPushCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-push",
		Usage:     "archive one WAL file: PostgreSQL's archive_command",
		ArgsUsage: "PATH",
		Description: "Archives the segment, .partial segment, timeline history or backup history file at PATH:\n\n" +
			"  archive_command = 'walship --repo URL wal-push %p'\n\n" +
			"Segments are checked against their name and the repository's walship.json (which the first segment\n" +
			"creates). A file already archived with the same bytes succeeds; different bytes under the same name\n" +
			"fail, since they mean two servers archive into one repository. Exit 0 once stored, 1 on failure\n" +
			"(PostgreSQL keeps the file and tries again), 2 on bad flags.",
		Flags: repoFlags(),
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("wal-push takes one argument, the file to archive: archive_command = 'walship --repo URL wal-push %%p'")
			}
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			return archiver.Push(c.Context, repo, c.Args().First(), e.log)
		},
	}
}

func (e *env) walFetchCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-fetch",
		Usage:     "fetch one WAL file: PostgreSQL's restore_command",
		ArgsUsage: "NAME DEST",
		Description: "Writes the WAL file NAME from the repository to DEST, checksums verified, atomically:\n\n" +
			"  restore_command = 'walship --repo URL wal-fetch %f %p'\n\n" +
			"A segment not yet complete in the repository is served from its shipped pieces, zero-padded, unless\n" +
			"its timeline has a successor. Exit 0 once DEST is written; 1 at once when the repository does not\n" +
			"hold NAME; 126 on any other failure (bad flags, a repository without walship.json, damage, storage\n" +
			"errors after retries), which makes PostgreSQL stop recovery rather than end it early.",
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "prefetch", EnvVars: []string{"WALSHIP_PREFETCH"}, Value: 8, Usage: "after a segment, download the next `N` into the spool in the background (0: none)"},
			&cli.StringFlag{Name: "spool", EnvVars: []string{"WALSHIP_SPOOL"}, TakesFile: true, Usage: "prefetch spool `DIR` (default: walship_prefetch/ in the data directory, outside pg_wal)"},
			&cli.UintFlag{Name: "tip-timeline", EnvVars: []string{"WALSHIP_FETCH_TIP_TIMELINE"}, Usage: "serve the tip from pieces for timeline `TLI` only, the one recovery targets, even when a branch off it exists (what walship restore sets)"},
			&cli.BoolFlag{Name: "no-pieces", EnvVars: []string{"WALSHIP_FETCH_NO_PIECES"}, Usage: "serve complete segments only, never the tip from its pieces (what walship replica sets for standbys, which stream the tip)"},
		}, repoFlags()...),
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return fetchExit(usageError{err})
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return fetchExit(usagef("wal-fetch takes two arguments, the file's name and where to write it: restore_command = 'walship --repo URL wal-fetch %%f %%p'"))
			}
			if n := c.Int("prefetch"); n < 0 || n > 256 {
				return fetchExit(usagef("--prefetch %d: want 0 to 256", n))
			}
			name, dest := c.Args().Get(0), c.Args().Get(1)
			f := &restore.Fetcher{Log: e.log, SpoolWait: 30 * time.Second, NoPieces: c.Bool("no-pieces"), TipTimeline: wal.TimeLineID(c.Uint("tip-timeline"))}
			if spool := spoolDir(c); spool != "" {
				f.Spool = &restore.Spool{Dir: spool}
				// Before opening the repository, which a hit never needs.
				taken, err := f.FromSpool(name, dest)
				if err != nil {
					return fetchExit(err)
				}
				if n := c.Int("prefetch"); n > 0 && len(name) == 24 && (!taken || f.Spool.Ahead(name) <= n/2) {
					// The keeper downloads ahead while this fetch runs;
					// a miss tells it where recovery is.
					if !taken {
						f.Spool.Want(name)
					}
					startPrefetch(c, spool, name, e)
				}
				if taken {
					return nil
				}
				f.Spool = nil
			}
			repo, err := openCatalog(c)
			if err != nil {
				return fetchExit(err)
			}
			f.Repo = repo
			return fetchExit(f.Fetch(c.Context, name, dest))
		},
	}
}

func (e *env) walPrefetchCommand() *cli.Command {
	return &cli.Command{
		Name:   "wal-prefetch",
		Hidden: true,
		Usage:  "download the segments after NAME into a prefetch spool (wal-fetch starts it)",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "spool", Required: true},
			&cli.IntFlag{Name: "count", Value: 8},
			&cli.DurationFlag{Name: "idle", Value: time.Minute, Usage: "keep the spool filled until nothing is taken from it for this long"},
		}, repoFlags()...),
		Action: func(c *cli.Context) error {
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			f := &restore.Fetcher{Repo: repo, Log: e.log}
			// In order, as many at once as there are cores: the next
			// segment recovery wants comes first.
			conc := min(c.Int("count"), runtime.NumCPU())
			return f.Keep(c.Context, restore.Spool{Dir: c.String("spool")}, c.Args().First(), c.Int("count"), conc, c.Duration("idle"))
		},
	}
}

// spoolDir is --spool, or the default spool when the working directory is
// a data directory (PostgreSQL runs restore_command in it); "" for none.
func spoolDir(c *cli.Context) string {
	if c.Int("prefetch") == 0 {
		return ""
	}
	if d := c.String("spool"); d != "" {
		return d
	}
	cwd, err := os.Getwd()
	if err != nil {
		return ""
	}
	if _, err := os.Stat(filepath.Join(cwd, "PG_VERSION")); err != nil {
		return ""
	}
	return restore.SpoolDir(cwd, c.String("repo"))
}

// startPrefetch starts a detached wal-prefetch for the segments after name
// and does not wait for it: restore_command returns at once.
func startPrefetch(c *cli.Context, spool, name string, e *env) {
	self, err := os.Executable()
	if err != nil {
		return
	}
	args := []string{"--repo", c.String("repo"), "--log-level", "warn", "wal-prefetch", "--spool", spool, "--count", strconv.Itoa(c.Int("prefetch")), "--idle", "1m"}
	if id := c.String("age-identity-file"); id != "" {
		args = append(args, "--age-identity-file", id)
	}
	cmd := exec.Command(self, append(args, name)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		e.log.Warn("start the prefetcher", "error", err)
		return
	}
	_ = cmd.Process.Release()
}

// exitError is a failure that picks its exit code.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// ExitCode is the process's exit status for this failure.
func (e exitError) ExitCode() int { return e.code }

// fetchExit gives a wal-fetch failure its exit code.
func fetchExit(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, restore.ErrNotFound):
		return exitError{exitNotFound, err}
	}
	return exitError{exitStopRecovery, err}
}

// commandExitCode is the exit code of a failure that fixes its own: an
// exitError, or any failure of a wal-fetch command line, including the global
// flags that fail before the command runs (wal-fetch must not exit 2, which
// PostgreSQL would take for the end of the archive).
func commandExitCode(args []string, err error) (int, bool) {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code, true
	}
	if commandName(args) == "wal-fetch" {
		return exitStopRecovery, true
	}
	return 0, false
}

// commandName is the command that args (os.Args) run: the first argument
// that is neither a global flag nor a global flag's value.
func commandName(args []string) string {
	takesValue := map[string]bool{}
	for _, f := range newApp(io.Discard, io.Discard).Flags {
		v, ok := f.(cli.DocGenerationFlag)
		for _, n := range f.Names() {
			takesValue[n] = ok && v.TakesValue()
		}
	}
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			if i+1 < len(args) {
				return args[i+1]
			}
			return ""
		case strings.HasPrefix(a, "-") && len(a) > 1:
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue[name] {
				i++
			}
		default:
			return a
		}
	}
	return ""
}
