package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/lease"
	"github.com/walship/walship/storage/location"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes of every command.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
	// exitLeaseHeld: another archiver holds the repository's lease; a
	// scheduler may simply try again later (sysexits' EX_TEMPFAIL).
	exitLeaseHeld = 75
)

// Attribute keys of log records.
const (
	keyRepo  = "repo"
	keyKey   = "key"
	keyError = "error"
	keyTook  = "took"
	keyBytes = "bytes"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks bad flags or input: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	// A panic exits with status 2, which PostgreSQL would take from
	// restore_command for "not found" and end recovery early.
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(stderr, "walship: internal error: %v\n%s", p, debug.Stack())
			code = exitFailed
			if commandName(args) == "wal-fetch" {
				code = exitStopRecovery
			}
		}
	}()
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "walship: %v\n", err)
	if code, ok := commandExitCode(args, err); ok {
		return code
	}
	var lh *lease.HeldError
	if errors.As(err, &lh) {
		return exitLeaseHeld
	}
	var ue usageError
	var le *location.Error
	if errors.As(err, &ue) || errors.As(err, &le) {
		return exitUsage
	}
	return exitFailed
}

// env is what every command gets: its output streams and, once the global
// flags are read, its logger.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

func newApp(stdout, stderr io.Writer) *cli.App {
	if progress.IsTerminal(stderr) {
		// Log lines and progress status lines share it.
		stderr = progress.NewTerminal(stderr)
	}
	e := &env{stdout: stdout, stderr: stderr}
	return &cli.App{
		Name:      "walship",
		Usage:     "keep PostgreSQL recoverable to any moment from object storage",
		Version:   version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "repo", EnvVars: []string{"WALSHIP_REPO"}, Usage: "repository `URL`: file:///path, s3://bucket/prefix?..., minio://host:port/bucket/prefix"},
			&cli.StringFlag{Name: "log-format", EnvVars: []string{"WALSHIP_LOG_FORMAT"}, Value: "text", Usage: "log format: text (for people) or json (for machines)"},
			pgFlag(),
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"WALSHIP_LOG_LEVEL"}, Value: "info", Usage: "log level: debug, info, warn or error"},
			configFlag(),
		},
		Before: func(c *cli.Context) (err error) {
			if err := applySettings(c); err != nil {
				return err
			}
			e.log, err = newLogger(c, stderr)
			return err
		},
		// Exit codes are chosen in run, not by the cli package.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("no command %q; see walship --help", c.Args().First())
			}
			_ = cli.ShowAppHelp(c)
			return usagef("no command given")
		},
		Commands: []*cli.Command{
			e.checkCommand(),
			e.archiveCommand(),
			e.backupCommand(),
			e.listCommand(),
			e.pruneCommand(),
			e.restoreCommand(),
			e.replicaCommand(),
			e.verifyCommand(),
			e.walPushCommand(), e.walFetchCommand(), e.walPrefetchCommand(),
		},
	}
}

func newLogger(c *cli.Context, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(c.String("log-format")) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", c.String("log-format"))
}

// openRepo parses --repo and opens the store it names.
func openRepo(c *cli.Context) (storage.Store, location.Location, error) {
	raw := c.String("repo")
	if raw == "" {
		return nil, location.Location{}, usagef("no repository: set --repo or WALSHIP_REPO (file:///path, s3://bucket/prefix or minio://host:port/bucket/prefix)")
	}
	loc, err := location.Parse(raw)
	if err != nil {
		return nil, loc, err
	}
	s, err := location.Open(c.Context, loc)
	if err != nil {
		return nil, loc, fmt.Errorf("open repository %s: %w", loc, err)
	}
	return s, loc, nil
}
