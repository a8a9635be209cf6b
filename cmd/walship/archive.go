package main

import (
	"context"
	"log/slog"
	"net"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/scheduler"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/lease"
	"github.com/walship/walship/storage/location"
)

// pgFlag is the connection to PostgreSQL. It is both a global flag and a flag
// of each command that connects, so that either place works.
func pgFlag() cli.Flag {
	return &cli.StringFlag{
		Name: "pg", EnvVars: []string{"WALSHIP_PG"},
		Usage: "PostgreSQL connection `CONNSTR` (libpq keyword/value or URL; PG* variables, .pgpass and sslmode work as in libpq)",
	}
}

// pgConnString is --pg from the command or, failing that, the global flag.
func pgConnString(c *cli.Context) string {
	for _, cc := range c.Lineage() {
		if cc.IsSet("pg") {
			return cc.String("pg")
		}
	}
	return ""
}

func (e *env) archiveCommand() *cli.Command {
	flags := append([]cli.Flag{
		pgFlag(),
		&cli.StringFlag{Name: "slot", EnvVars: []string{"WALSHIP_SLOT"}, Value: archiver.DefaultSlot, Usage: "physical replication `SLOT`, created (with RESERVE_WAL) if absent"},
		&cli.StringFlag{Name: "application-name", EnvVars: []string{"WALSHIP_APPLICATION_NAME"}, Value: archiver.DefaultAppName, Usage: "application_name the primary sees; name it in synchronous_standby_names only with --synchronous"},
		&cli.DurationFlag{Name: "sync-interval", EnvVars: []string{"WALSHIP_SYNC_INTERVAL"}, Value: archiver.DefaultSyncInterval, Usage: "ship the filling segment's new WAL this often: the most a crash of the primary can lose"},
		&cli.DurationFlag{Name: "status-interval", EnvVars: []string{"WALSHIP_STATUS_INTERVAL"}, Value: archiver.DefaultStatusInterval, Usage: "send a status update to the primary this often (keep it under wal_sender_timeout)"},
		&cli.BoolFlag{Name: "synchronous", EnvVars: []string{"WALSHIP_SYNCHRONOUS"}, Usage: "ship and acknowledge WAL as soon as it arrives, for use in synchronous_standby_names"},
		&cli.BoolFlag{Name: "until-caught-up", EnvVars: []string{"WALSHIP_UNTIL_CAUGHT_UP"}, Usage: "ship everything the primary had flushed at start, the filling segment included, then exit 0"},
		&cli.DurationFlag{Name: "max-duration", EnvVars: []string{"WALSHIP_MAX_DURATION"}, Usage: "stop cleanly after `D` (0: run until stopped)"},
		&cli.StringFlag{Name: "memory-limit", EnvVars: []string{"WALSHIP_MEMORY_LIMIT"}, Value: "64MiB", Usage: "soft limit on the process's memory; half of it, and at least two segments, buffers WAL"},
		&cli.IntFlag{Name: "uploaders", EnvVars: []string{"WALSHIP_UPLOADERS"}, Value: archiver.DefaultUploaders, Usage: "objects uploaded at once"},
		&cli.BoolFlag{Name: "wait", EnvVars: []string{"WALSHIP_WAIT"}, Usage: "wait for another archiver's lease on the repository to end instead of failing"},
		&cli.DurationFlag{Name: "lease-ttl", EnvVars: []string{"WALSHIP_LEASE_TTL"}, Value: lease.DefaultTTL, Usage: "how long the repository lease outlives a killed archiver"},
		&cli.BoolFlag{Name: "accept-gap", EnvVars: []string{"WALSHIP_ACCEPT_GAP"}, Usage: "when the primary has already removed the next WAL to archive, go on from where its WAL begins now, recording the gap (take a new base backup)"},
		partSizeFlag(),
		&cli.StringFlag{Name: "backup-schedule", EnvVars: []string{"WALSHIP_BACKUP_SCHEDULE"}, Usage: "take base backups on this cron `SCHEDULE` while archiving (e.g. \"0 3 * * *\", @daily; UTC)"},
		&cli.BoolFlag{Name: "backup-fast", EnvVars: []string{"WALSHIP_BACKUP_FAST"}, Usage: "scheduled backups start with an immediate checkpoint instead of a spread one"},
		&cli.StringFlag{Name: "prune-schedule", EnvVars: []string{"WALSHIP_PRUNE_SCHEDULE"}, Usage: "apply --keep/--keep-within on this cron `SCHEDULE` while archiving"},
		&cli.IntFlag{Name: "keep", EnvVars: []string{"WALSHIP_KEEP"}, Usage: "with --prune-schedule: keep the `N` newest backups"},
		&cli.DurationFlag{Name: "keep-within", EnvVars: []string{"WALSHIP_KEEP_WITHIN"}, Usage: "with --prune-schedule: keep what recovery to any moment of the last `D` needs"},
		sweepFlag("with --prune-schedule: "),
		&cli.DurationFlag{Name: "stop-timeout", EnvVars: []string{"WALSHIP_STOP_TIMEOUT"}, Value: archiver.DefaultStopTimeout, Usage: "how long a stop may take to store and acknowledge what was received"},
		&cli.StringFlag{Name: "metrics-addr", EnvVars: []string{"WALSHIP_METRICS_ADDR"}, Usage: "serve Prometheus metrics (/metrics), /healthz and /readyz at `HOST:PORT`"},
	}, heartbeatFlags()...)
	flags = append(flags, repoFlags()...)
	return &cli.Command{
		Name:  "archive",
		Usage: "stream WAL from a physical replication slot into the repository",
		Description: "Connects to the primary as a streaming-replication client, creates the slot if needed, and ships\n" +
			"every WAL segment, plus the filling segment in pieces every --sync-interval. The primary is told\n" +
			"WAL is safe only once it is in the repository. SIGINT and SIGTERM stop cleanly: what was received\n" +
			"is stored and acknowledged first.",
		Flags: flags,
		Action: func(c *cli.Context) error {
			if err := archiver.ValidSlotName(c.String("slot")); err != nil {
				return usageError{err}
			}
			mem, err := location.ParseSize(c.String("memory-limit"))
			if err != nil {
				return usagef("--memory-limit %q: %v", c.String("memory-limit"), err)
			}
			for _, name := range []string{"sync-interval", "status-interval", "max-duration", "stop-timeout", "lease-ttl"} {
				if c.Duration(name) < 0 {
					return usagef("--%s %s: want a positive duration", name, c.Duration(name))
				}
			}
			if c.Int("uploaders") < 1 || c.Int("uploaders") > 64 {
				return usagef("--uploaders %d: want 1 to 64", c.Int("uploaders"))
			}
			metricsAddr := c.String("metrics-addr")
			if metricsAddr != "" {
				if _, _, err := net.SplitHostPort(metricsAddr); err != nil {
					return usagef("--metrics-addr %q: want HOST:PORT, such as :9187 or 127.0.0.1:9187", metricsAddr)
				}
			}
			hb, err := newHeartbeat(c.String("heartbeat-url"), c.Duration("heartbeat-interval"), e.log)
			if err != nil {
				return err
			}
			// The Go runtime collects harder as it nears the limit, rather
			// than letting the heap grow to twice what is live.
			debug.SetMemoryLimit(mem)
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			stats := new(archiver.Stats)
			runner, err := e.schedules(c, repo, stats)
			if err != nil {
				return err
			}
			if metricsAddr != "" {
				m, err := startMetrics(metricsAddr, stats, runner, pgConnString(c), c.String("slot"), e.log)
				if err != nil {
					return err
				}
				defer m.stop()
			}
			ctx := c.Context
			if d := c.Duration("max-duration"); d > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			if hb != nil {
				watching, stopWatching := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { hb.watch(watching, stats); close(done) }()
				defer func() { stopWatching(); <-done }()
			}
			if runner != nil {
				// Scheduled jobs stop with the archiver; a running backup
				// finishes first.
				jobs, stopJobs := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { runner.Run(jobs); close(done) }()
				defer func() { stopJobs(); <-done }()
			}
			res, err := archiver.Run(ctx, repo, archiver.Config{
				ConnString:     pgConnString(c),
				Slot:           c.String("slot"),
				AppName:        c.String("application-name"),
				SyncInterval:   c.Duration("sync-interval"),
				StatusInterval: c.Duration("status-interval"),
				Synchronous:    c.Bool("synchronous"),
				UntilCaughtUp:  c.Bool("until-caught-up"),
				MemoryLimit:    mem / 2,
				Uploaders:      c.Int("uploaders"),
				StopTimeout:    c.Duration("stop-timeout"),
				LeaseTTL:       c.Duration("lease-ttl"),
				WaitForLease:   c.Bool("wait"),
				AcceptGap:      c.Bool("accept-gap"),
				Log:            e.log,
				Stats:          stats,
			})
			e.log.Info("archive run ended",
				slog.String("durable", res.Durable.String()), slog.Any("timeline", res.Timeline),
				slog.Int("segments", res.Segments), slog.Int("pieces", res.Pieces))
			if err == nil && hb != nil {
				hb.final(ctx, stats, c.Bool("until-caught-up"))
			}
			return err
		},
	}
}

// schedules sets up the backups and pruning that run inside the archiver;
// nil when none is asked for.
func (e *env) schedules(c *cli.Context, repo *catalog.Repo, stats *archiver.Stats) (*scheduler.Runner, error) {
	bs, ps := c.String("backup-schedule"), c.String("prune-schedule")
	if bs == "" && ps == "" {
		return nil, nil
	}
	r := scheduler.NewRunner(e.log)
	if bs != "" {
		sched, err := scheduler.ParseSchedule(bs)
		if err != nil {
			return nil, usagef("--backup-schedule: %v", err)
		}
		partSize, err := parsePartSize(c)
		if err != nil {
			return nil, err
		}
		cfg := archiver.BackupConfig{ConnString: pgConnString(c), Slot: c.String("slot"), Fast: c.Bool("backup-fast"), PartSize: partSize, Log: e.log, Stats: stats}
		r.Add(c.Context, "backup", sched, func(ctx context.Context) error {
			_, err := archiver.Backup(ctx, repo, cfg)
			return err
		})
	}
	if ps != "" {
		sched, err := scheduler.ParseSchedule(ps)
		if err != nil {
			return nil, usagef("--prune-schedule: %v", err)
		}
		policy := scheduler.Policy{Keep: c.Int("keep"), KeepWithin: c.Duration("keep-within")}
		if err := policy.Validate(); err != nil {
			return nil, usagef("--prune-schedule: %v", err)
		}
		sweepAge, err := sweepAge(c)
		if err != nil {
			return nil, err
		}
		r.Add(c.Context, "prune", sched, func(ctx context.Context) error { return prune(ctx, repo, policy, sweepAge, e.log, false, nil) })
	}
	return r, nil
}
