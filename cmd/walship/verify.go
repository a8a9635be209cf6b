package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/restore"
)

func (e *env) verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check the repository: every object's checksum, backups, history files and WAL continuity",
		Description: "Reads every object and checks its checksum (no identity needed for an encrypted repository), that\n" +
			"each backup's objects are those its backup.json records, that every timeline after the first has its\n" +
			"history file, and that the WAL runs without a hole from each backup to the end of every timeline it\n" +
			"leads to. Each problem says what it breaks. Exit 0 when all is well, 1 on any problem.",
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "concurrency", EnvVars: []string{"WALSHIP_VERIFY_CONCURRENCY"}, Value: 4, Usage: "objects read at once"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"WALSHIP_JSON"}, Usage: "print the report as JSON"},
		}, repoFlags()...),
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if n := c.Int("concurrency"); n < 1 || n > 64 {
				return usagef("--concurrency %d: want 1 to 64", n)
			}
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			r, err := restore.Verify(c.Context, repo, c.Int("concurrency"), e.log)
			if err != nil {
				return err
			}
			w := c.App.Writer
			if c.Bool("json") {
				problems := make([]map[string]string, 0, len(r.Problems))
				for _, p := range r.Problems {
					problems = append(problems, map[string]string{"key": p.Key, "problem": p.What, "breaks": p.Breaks})
				}
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(map[string]any{
					"objects": r.Objects, "stored_bytes": r.StoredBytes, "backups": r.Backups,
					"timelines": r.Timelines, "problems": problems, "sealed_backups": r.Sealed,
				}); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(w, "verified %d objects (%s), %d backups, %d timelines\n", r.Objects, progress.Bytes(r.StoredBytes), r.Backups, r.Timelines)
				for _, p := range r.Problems {
					fmt.Fprintf(w, "PROBLEM %s\n", p)
				}
				if len(r.Sealed) > 0 {
					fmt.Fprintf(w, "NOT CHECKED: %d backups against their encrypted backup.json, nor the WAL from their start; give --age-identity-file to check them\n", len(r.Sealed))
				}
			}
			if len(r.Problems) > 0 {
				return errors.New(fmt.Sprint(len(r.Problems), " problem(s) found"))
			}
			return nil
		},
	}
}
