package main

import (
	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/restore"
)

func (e *env) replicaCommand() *cli.Command {
	flags := append([]cli.Flag{
		targetDirFlag(),
		&cli.StringFlag{Name: "primary-conninfo", EnvVars: []string{"WALSHIP_PRIMARY_CONNINFO"}, Required: true, Usage: "primary_conninfo: how the standby reaches the primary (`CONNSTR`, libpq keyword/value; keep the password in the standby user's .pgpass)"},
		&cli.StringFlag{Name: "slot", EnvVars: []string{"WALSHIP_REPLICA_SLOT"}, Usage: "primary_slot_name: the physical `SLOT` the standby streams from"},
		&cli.BoolFlag{Name: "create-slot", EnvVars: []string{"WALSHIP_CREATE_SLOT"}, Usage: "create --slot on the primary (RESERVE_WAL) through --primary-conninfo if it does not exist"},
		&cli.StringFlag{Name: "backup", EnvVars: []string{"WALSHIP_BACKUP"}, Usage: "seed from backup `ID` instead of the newest"},
		tablespaceMapFlag(),
		parallelFlag(),
	}, repoFlags()...)
	return &cli.Command{
		Name:  "replica",
		Usage: "seed a streaming standby from the repository",
		Description: "Restores the newest backup (of the timeline with the newest WAL) into --target-dir and configures\n" +
			"it as a standby: standby.signal, primary_conninfo, primary_slot_name, recovery_target_timeline =\n" +
			"'latest', and a restore_command that runs this walship, so that the standby catches up from the\n" +
			"repository and then streams from the primary:\n\n" +
			"  walship --repo s3://bucket/pg replica --target-dir /var/lib/postgresql/16/main \\\n" +
			"      --primary-conninfo 'host=primary user=replicator application_name=standby1' --slot standby1 --create-slot",
		Flags: flags,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if n := c.Int("parallel"); n < 1 || n > 64 {
				return usagef("--parallel %d: want 1 to 64", n)
			}
			dir, tablespaces, err := targetDirs(c)
			if err != nil {
				return err
			}
			slot := c.String("slot")
			if slot != "" {
				if err := archiver.ValidSlotName(slot); err != nil {
					return usagef("--slot %q: %v", slot, err)
				}
			}
			if c.Bool("create-slot") && slot == "" {
				return usagef("--create-slot needs --slot")
			}
			fetchCmd, err := restoreCommand(c)
			if err != nil {
				return err
			}
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			meter := progress.Start("replica", 0, e.stderr, e.log)
			plan, err := restore.Restore(c.Context, repo, restore.Options{
				Dir:         dir,
				Target:      restore.Target{Kind: restore.Immediate, Backup: c.String("backup")},
				Tablespaces: tablespaces,
				Parallel:    c.Int("parallel"),
				Progress:    meter,
				Recovery: restore.Recovery{
					Standby:         true,
					PrimaryConnInfo: c.String("primary-conninfo"),
					PrimarySlot:     slot,
				},
				// Complete segments only: the standby streams the tip, and
				// a shorter copy of it from the repository would hide what
				// its pg_wal holds when it is promoted.
				RestoreCommand: func(wal.TimeLineID) string { return fetchCmd("--no-pieces") },
				Log:            e.log,
			})
			meter.Stop()
			if err != nil {
				return err
			}
			// After the restore, so that a failed one leaves no slot
			// holding WAL on the primary.
			if c.Bool("create-slot") {
				created, err := archiver.CreateSlot(c.Context, c.String("primary-conninfo"), slot)
				if err != nil {
					return err
				}
				if created {
					e.log.Info("created replication slot on the primary", "slot", slot)
				}
			}
			printPlan(c.App.Writer, plan, dir)
			return nil
		},
	}
}
