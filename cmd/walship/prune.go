package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/scheduler"
)

func (e *env) pruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "apply retention: delete backups outside the policy and the WAL no kept backup needs",
		Description: "A backup is kept when --keep or --keep-within keeps it; the newest always is. WAL from the\n" +
			"oldest kept backup's start on stays, history files stay, and backups that never finished go\n" +
			"(unless a backup is running).",
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "keep", EnvVars: []string{"WALSHIP_KEEP"}, Usage: "keep the `N` newest backups"},
			&cli.DurationFlag{Name: "keep-within", EnvVars: []string{"WALSHIP_KEEP_WITHIN"}, Usage: "keep what recovery to any moment of the last `D` needs"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan, delete nothing"},
			&cli.BoolFlag{Name: "json", Usage: "print the plan as JSON"},
		}, repoFlags()...),
		Action: func(c *cli.Context) error {
			policy := scheduler.Policy{Keep: c.Int("keep"), KeepWithin: c.Duration("keep-within")}
			if err := policy.Validate(); err != nil {
				return usageError{err}
			}
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			// Hold the backup lease so that no backup starts meanwhile; if
			// one is running, keep what may be its objects.
			running := false
			lease, err := archiver.AcquireLease(c.Context, repo.Store(), archiver.LeaseOptions{Name: archiver.BackupLease, Log: e.log})
			var held *archiver.LeaseHeldError
			switch {
			case errors.As(err, &held):
				running = true
				e.log.Info("a backup is running; its unfinished objects are kept", slog.String("holder", held.Holder))
			case err != nil:
				return err
			default:
				defer lease.Release(c.Context)
			}
			inv, err := scheduler.TakeInventory(c.Context, repo, running)
			if err != nil {
				return err
			}
			plan, err := scheduler.PlanRetention(inv, policy, time.Now())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(plan); err != nil {
					return err
				}
			} else {
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
			}
			if c.Bool("dry-run") {
				return nil
			}
			n, err := scheduler.Prune(c.Context, repo, plan, e.log)
			e.log.Info("pruned", slog.Int("deleted", n))
			return err
		},
	}
}
