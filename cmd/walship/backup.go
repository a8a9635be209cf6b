package main

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/scheduler"
	"github.com/walship/walship/storage/lease"
	"github.com/walship/walship/storage/location"
)

func (e *env) backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "take a base backup now through BASE_BACKUP and stream it into the repository; prints its id",
		Description: "The backup's archives and the server's backup_manifest go straight into the repository, compressed\n" +
			"(and encrypted when configured), with no local disk. backup.json is written last, once the WAL up to the\n" +
			"backup's end is in the repository: shipped by a running archiver, or by this command itself when none runs.",
		Flags: append([]cli.Flag{
			pgFlag(),
			&cli.StringFlag{Name: "label", EnvVars: []string{"WALSHIP_BACKUP_LABEL"}, Usage: "backup label on the server (default: walship <id>)"},
			&cli.BoolFlag{Name: "fast", EnvVars: []string{"WALSHIP_BACKUP_FAST"}, Usage: "start with an immediate checkpoint instead of a spread one"},
			&cli.StringFlag{Name: "slot", EnvVars: []string{"WALSHIP_SLOT"}, Value: archiver.DefaultSlot, Usage: "the archiver's `SLOT`, used to ship the backup's WAL when no archiver runs"},
			&cli.StringFlag{Name: "memory-limit", EnvVars: []string{"WALSHIP_MEMORY_LIMIT"}, Value: "64MiB", Usage: "soft limit on the process's memory (compression and upload buffers)"},
			&cli.IntFlag{Name: "max-rate", EnvVars: []string{"WALSHIP_BACKUP_MAX_RATE"}, Usage: "bound the server's transfer rate in `kB/s` (32 to 1048576; 0: unlimited)"},
			&cli.IntFlag{Name: "concurrency", EnvVars: []string{"WALSHIP_BACKUP_CONCURRENCY"}, Value: 2, Usage: "zstd goroutines per archive"},
			partSizeFlag(),
			&cli.DurationFlag{Name: "lease-ttl", EnvVars: []string{"WALSHIP_LEASE_TTL"}, Value: lease.DefaultTTL, Usage: "how long the backup lease outlives a killed backup"},
			&cli.BoolFlag{Name: "if-due", EnvVars: []string{"WALSHIP_IF_DUE"}, Usage: "take the backup only if --schedule says one is due, judging from the repository alone (for cron jobs and cloud schedulers)"},
			&cli.StringFlag{Name: "schedule", EnvVars: []string{"WALSHIP_BACKUP_SCHEDULE"}, Usage: "cron `SCHEDULE` for --if-due (e.g. \"0 3 * * *\" or @daily; UTC)"},
			&cli.DurationFlag{Name: "wal-timeout", EnvVars: []string{"WALSHIP_WAL_TIMEOUT"}, Value: 5 * time.Minute, Usage: "how long to wait for a running archiver to store the backup's last WAL segment"},
			&cli.StringFlag{Name: "heartbeat-url", EnvVars: []string{"WALSHIP_HEARTBEAT_URL"}, Usage: "dead-man switch: GET this `URL` once the backup is stored; a failure is logged, never fatal"},
		}, repoFlags()...),
		Action: func(c *cli.Context) error {
			if err := archiver.ValidSlotName(c.String("slot")); err != nil {
				return usageError{err}
			}
			if n := c.Int("concurrency"); n < 1 || n > 64 {
				return usagef("--concurrency %d: want 1 to 64", n)
			}
			mem, err := location.ParseSize(c.String("memory-limit"))
			if err != nil || mem < 16<<20 {
				return usagef("--memory-limit %q: want a size of at least 16MiB, such as 64MiB", c.String("memory-limit"))
			}
			partSize, err := parsePartSize(c)
			if err != nil {
				return err
			}
			hb, err := newHeartbeat(c.String("heartbeat-url"), time.Minute, e.log)
			if err != nil {
				return err
			}
			// Without a limit the heap may grow to twice what is live.
			debug.SetMemoryLimit(mem)
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			if c.Bool("if-due") {
				if c.String("schedule") == "" {
					return usagef("--if-due needs --schedule")
				}
				sched, err := scheduler.ParseSchedule(c.String("schedule"))
				if err != nil {
					return usageError{err}
				}
				l, err := repo.ListBackups(c.Context)
				if err != nil {
					return err
				}
				due, next := scheduler.BackupDue(l.Backups, sched, time.Now())
				if !due {
					e.log.Info("no backup due", slog.Time("next_due", next))
					return nil
				}
			}
			// Progress on a terminal against the server's estimate (as
			// pg_basebackup -P), otherwise a log line now and then.
			meter := progress.Start("backup", 0, e.stderr, e.log)
			b, err := archiver.Backup(c.Context, repo, archiver.BackupConfig{
				ConnString:   pgConnString(c),
				Label:        c.String("label"),
				Fast:         c.Bool("fast"),
				MaxRate:      c.Int("max-rate"),
				Slot:         c.String("slot"),
				Concurrency:  c.Int("concurrency"),
				PartSize:     partSize,
				WALTimeout:   c.Duration("wal-timeout"),
				LeaseTTL:     c.Duration("lease-ttl"),
				Progress:     meter,
				EstimateSize: progress.IsTerminal(e.stderr),
				Log:          e.log,
			})
			meter.Stop()
			if err != nil {
				return err
			}
			e.log.Info("backup stored", slog.String("id", b.ID), slog.Int64("raw_bytes", b.RawSize), slog.Int64("stored_bytes", b.StoredSize))
			fmt.Fprintln(e.stdout, b.ID)
			if hb != nil {
				hb.ping(c.Context, "backup")
			}
			return nil
		},
	}
}

func partSizeFlag() cli.Flag {
	return &cli.StringFlag{Name: "part-size", EnvVars: []string{"WALSHIP_PART_SIZE"}, Value: "128MiB", Usage: "cut backup archives into parts of about this `SIZE`, at file boundaries, so that restores extract them in parallel"}
}

// parsePartSize reads --part-size: at least 1MiB.
func parsePartSize(c *cli.Context) (int64, error) {
	n, err := location.ParseSize(c.String("part-size"))
	if err != nil || n < 1<<20 {
		return 0, usagef("--part-size %q: want a size of at least 1MiB, such as 128MiB", c.String("part-size"))
	}
	return n, nil
}
