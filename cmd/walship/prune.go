package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/scheduler"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/lease"
)

func (e *env) pruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "apply retention: delete backups outside the policy and the WAL no kept backup needs",
		Description: "A backup is kept when --keep or --keep-within keeps it; the newest always is. WAL from the\n" +
			"oldest kept backup's start on stays, history files stay, and backups that never finished go\n" +
			"(unless a backup is running). What writes cut short left behind (temporary files, incomplete\n" +
			"multipart uploads) goes once older than --sweep-older-than.",
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "keep", EnvVars: []string{"WALSHIP_KEEP"}, Usage: "keep the `N` newest backups"},
			&cli.DurationFlag{Name: "keep-within", EnvVars: []string{"WALSHIP_KEEP_WITHIN"}, Usage: "keep what recovery to any moment of the last `D` needs"},
			&cli.BoolFlag{Name: "dry-run", EnvVars: []string{"WALSHIP_PRUNE_DRY_RUN"}, Usage: "print the plan, delete nothing"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"WALSHIP_JSON"}, Usage: "print the plan as JSON"},
			sweepFlag(""),
		}, repoFlags()...),
		Action: func(c *cli.Context) error {
			policy := scheduler.Policy{Keep: c.Int("keep"), KeepWithin: c.Duration("keep-within")}
			if err := policy.Validate(); err != nil {
				return usageError{err}
			}
			sweepAge, err := sweepAge(c)
			if err != nil {
				return err
			}
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			show := func(plan scheduler.Plan, sweep *scheduler.SweepPlan) error {
				if c.Bool("json") {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(pruneReport{plan, sweep})
				}
				for _, d := range plan.Keep {
					fmt.Fprintf(e.stdout, "keep    %s  %s\n", d.ID, d.Reason)
				}
				for _, d := range plan.DeleteBackups {
					fmt.Fprintf(e.stdout, "delete  %s  %s\n", d.ID, d.Reason)
				}
				if plan.WALBefore != "" {
					fmt.Fprintf(e.stdout, "WAL before %s goes\n", plan.WALBefore)
				}
				for _, n := range plan.Notes {
					fmt.Fprintf(e.stdout, "note: %s\n", n)
				}
				fmt.Fprintf(e.stdout, "%d objects to delete\n", len(plan.DeleteKeys))
				if sweep != nil {
					now := time.Now()
					for _, l := range sweep.Sweep {
						fmt.Fprintf(e.stdout, "sweep   %s  %s, begun or last written %s ago\n", l.Key, l.ID, now.Sub(l.Time).Round(time.Second))
					}
					for _, n := range sweep.Notes {
						fmt.Fprintf(e.stdout, "note: %s\n", n)
					}
					fmt.Fprintf(e.stdout, "%d leftovers of interrupted writes older than %s to sweep\n", len(sweep.Sweep), sweepAge)
				}
				return nil
			}
			return prune(c.Context, repo, policy, sweepAge, e.log, c.Bool("dry-run"), show)
		},
	}
}

// pruneReport is what prune --json prints: the retention plan and, under
// "sweep", the leftovers to sweep.
type pruneReport struct {
	scheduler.Plan
	Sweep *scheduler.SweepPlan `json:"sweep,omitempty"`
}

// sweepFlag is --sweep-older-than; scope, if not empty, says when it
// applies.
func sweepFlag(scope string) cli.Flag {
	return &cli.DurationFlag{
		Name: "sweep-older-than", EnvVars: []string{"WALSHIP_SWEEP_OLDER_THAN"}, Value: defaultSweepAge,
		Usage: scope + "also remove what writes cut short left behind (temporary files, incomplete multipart uploads) once begun more than `D` ago; " +
			"a running upload looks the same, so keep D above the longest one; 0: never",
	}
}

// defaultSweepAge is far above any upload's duration.
const defaultSweepAge = 24 * time.Hour

// sweepAge reads --sweep-older-than.
func sweepAge(c *cli.Context) (time.Duration, error) {
	d := c.Duration("sweep-older-than")
	if d < 0 {
		return 0, usagef("--sweep-older-than %s: want a positive duration, or 0 for no sweep", d)
	}
	return d, nil
}

// prune plans and applies retention while holding the backup lease, so that
// no backup starts meanwhile; if one is running, what may be its objects
// are kept. Then, unless sweepAge is 0, it sweeps the leftovers of writes
// begun more than sweepAge ago.
// show, if not nil, sees the plans first (sweep is nil when sweepAge is 0);
// dryRun stops there.
func prune(ctx context.Context, repo *catalog.Repo, policy scheduler.Policy, sweepAge time.Duration, log *slog.Logger, dryRun bool, show func(plan scheduler.Plan, sweep *scheduler.SweepPlan) error) error {
	running, release, err := backupLease(ctx, repo, log)
	if err != nil {
		return err
	}
	defer release()
	now := time.Now()
	inv, err := scheduler.TakeInventory(ctx, repo, running)
	if err != nil {
		return err
	}
	plan, err := scheduler.PlanRetention(inv, policy, now)
	if err != nil {
		return err
	}
	var sweep *scheduler.SweepPlan
	if sweepAge > 0 {
		// Retention goes on without the sweep: an identity allowed to
		// prune but not to list uploads must not stop it.
		sp, err := scheduler.PlanSweep(ctx, repo, now.Add(-sweepAge), running)
		if err != nil {
			log.Warn("cannot look for leftovers of interrupted writes; pruning without sweeping them (the pruner needs s3:ListBucketMultipartUploads and s3:AbortMultipartUpload, or set --sweep-older-than 0)", slog.Any("error", err))
		} else {
			sweep = &sp
		}
	}
	if show != nil {
		if err := show(plan, sweep); err != nil {
			return err
		}
	}
	if dryRun {
		return nil
	}
	n, err := scheduler.Prune(ctx, repo, plan, log)
	log.Info("pruned", slog.Int("deleted_objects", n), slog.Int("deleted_backups", len(plan.DeleteBackups)))
	if err != nil || sweep == nil {
		return err
	}
	n, err = scheduler.Sweep(ctx, repo, *sweep, log)
	log.Info("swept", slog.Int("leftovers", n))
	return err
}

// backupLease takes the backup lease for a prune; running reports that a
// backup holds it instead.
func backupLease(ctx context.Context, repo *catalog.Repo, log *slog.Logger) (running bool, release func(), err error) {
	l, err := lease.Acquire(ctx, repo.Store(), lease.Options{Name: archiver.BackupLease, Log: log})
	var held *lease.HeldError
	switch {
	case errors.As(err, &held):
		log.Info("a backup is running; its unfinished objects are kept", slog.String("holder", held.Holder))
		return true, func() {}, nil
	case err != nil:
		return false, nil, err
	}
	return false, func() { _ = l.Release(context.WithoutCancel(ctx)) }, nil
}
