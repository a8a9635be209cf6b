package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/scheduler"
	"github.com/walship/walship/storage/catalog"
)

// listing is what `walship list` shows, and its --json form.
type listing struct {
	Repository string            `json:"repository"`
	Meta       *catalog.Meta     `json:"meta,omitempty"`
	Backups    []catalog.Backup  `json:"backups"`
	WAL        []walExtent       `json:"wal"`
	Unfinished []string          `json:"unfinished_backups,omitempty"`
	Invalid    map[string]string `json:"invalid_backups,omitempty"`
	Slot       *slotState        `json:"slot,omitempty"`
	NextBackup string            `json:"next_backup_due,omitempty"`
	// Window is the recoverable window of the timeline with the newest
	// WAL; Windows has every timeline's.
	Window  *window  `json:"recoverable_window,omitempty"`
	Windows []window `json:"recoverable_windows,omitempty"`
}

// window is the span of times --to-time may name along a timeline: exact
// from the commit times in the WAL, or else approximate, from backup and
// object times.
type window struct {
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Timeline uint32    `json:"timeline"`
	Exact    bool      `json:"exact"`
}

type walExtent struct {
	Timeline uint32   `json:"timeline"`
	First    string   `json:"first_segment,omitempty"`
	Last     string   `json:"last_segment,omitempty"`
	Segments int      `json:"segments"`
	End      string   `json:"end_lsn,omitempty"`
	Missing  []string `json:"missing,omitempty"`
	Accepted []string `json:"accepted_gaps,omitempty"`
	Partial  bool     `json:"ended_with_partial,omitempty"`
	History  bool     `json:"history_file"`
}

type slotState struct {
	Name        string `json:"name"`
	Active      bool   `json:"active"`
	RestartLSN  string `json:"restart_lsn,omitempty"`
	WALStatus   string `json:"wal_status,omitempty"`
	SafeWALSize *int64 `json:"safe_wal_size,omitempty"`
	Error       string `json:"error,omitempty"`
}

func (e *env) listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "show backups, the WAL extent and its holes per timeline, and (with --pg) the slot",
		Flags: append([]cli.Flag{
			pgFlag(),
			&cli.BoolFlag{Name: "json", EnvVars: []string{"WALSHIP_JSON"}, Usage: "print JSON for machines"},
			&cli.StringFlag{Name: "slot", EnvVars: []string{"WALSHIP_SLOT"}, Value: "walship", Usage: "the archiver's replication `SLOT`, shown with --pg"},
			&cli.StringFlag{Name: "backup-schedule", EnvVars: []string{"WALSHIP_BACKUP_SCHEDULE"}, Usage: "show when the next backup is due under this cron `SCHEDULE`"},
		}, repoFlags()...),
		Action: func(c *cli.Context) error {
			repo, err := openCatalog(c)
			if err != nil {
				return err
			}
			l, err := collect(c.Context, repo)
			if err != nil {
				return err
			}
			l.Repository = c.String("repo")
			if spec := c.String("backup-schedule"); spec != "" {
				sched, err := scheduler.ParseSchedule(spec)
				if err != nil {
					return usagef("--backup-schedule: %v", err)
				}
				_, next := scheduler.BackupDue(l.Backups, sched, time.Now())
				l.NextBackup = next.UTC().Format(time.RFC3339)
			}
			if pg := pgConnString(c); pg != "" {
				l.Slot = readSlotState(c.Context, pg, c.String("slot"))
			}
			if c.Bool("json") {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(l)
			}
			printListing(e.stdout, l)
			return nil
		},
	}
}

func collect(ctx context.Context, repo *catalog.Repo) (listing, error) {
	l := listing{Backups: []catalog.Backup{}, WAL: []walExtent{}}
	meta, err := repo.ReadMeta(ctx)
	if errors.Is(err, catalog.ErrNoMeta) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	l.Meta = &meta
	inv, err := restore.LoadInventory(ctx, repo, false)
	if err != nil {
		return l, err
	}
	bl, ext := inv.Listing, inv.Extents
	l.Backups = bl.Backups
	for id := range bl.Orphans {
		l.Unfinished = append(l.Unfinished, id)
	}
	for id, err := range bl.Invalid {
		if l.Invalid == nil {
			l.Invalid = map[string]string{}
		}
		l.Invalid[id] = err.Error()
	}
	if len(l.Backups) > 0 && len(ext) > 0 {
		if err := restore.LoadEvents(ctx, repo, &inv); err != nil {
			return l, err
		}
		latest, _ := restore.PlanRestore(inv, restore.Target{Kind: restore.Latest})
		for _, x := range ext {
			if x.TLI == 0 {
				continue
			}
			rw, ok := restore.RecoverableWindow(inv, x.TLI)
			if !ok {
				continue
			}
			w := window{From: rw.From.UTC(), To: rw.To.UTC(), Timeline: uint32(x.TLI), Exact: rw.Exact}
			l.Windows = append(l.Windows, w)
			if x.TLI == latest.Timeline {
				l.Window = &w
			}
		}
	}
	for _, x := range ext {
		if x.TLI == 0 {
			continue // stray keys: verify reports them
		}
		w := walExtent{Timeline: uint32(x.TLI), Segments: x.Segments, Partial: x.Partial, History: x.History || x.TLI == 1}
		if x.Segments > 0 {
			w.First = wal.Segment{TLI: x.TLI, No: x.First}.Name(meta.SegmentSize)
			w.Last = wal.Segment{TLI: x.TLI, No: x.Last}.Name(meta.SegmentSize)
		}
		if end := x.End(meta.SegmentSize); end > 0 {
			w.End = end.String()
		}
		for _, m := range x.Missing {
			w.Missing = append(w.Missing, wal.Segment{TLI: x.TLI, No: m.From}.Name(meta.SegmentSize)+".."+wal.Segment{TLI: x.TLI, No: m.To}.Name(meta.SegmentSize))
		}
		for _, a := range x.Accepted {
			w.Accepted = append(w.Accepted, "before "+wal.Segment{TLI: x.TLI, No: a}.Name(meta.SegmentSize))
		}
		l.WAL = append(l.WAL, w)
	}
	return l, nil
}

// readSlotState asks the primary about the slot over an ordinary
// connection; a failure is shown, not fatal.
func readSlotState(ctx context.Context, connString, slot string) *slotState {
	st := &slotState{Name: slot}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		st.Error = "connect: " + archiver.Redact(err).Error()
		return st
	}
	defer conn.Close(context.Background())
	var restart *string
	var status *string
	err = conn.QueryRow(ctx, "SELECT active, restart_lsn::text, wal_status, safe_wal_size FROM pg_replication_slots WHERE slot_name = $1", slot).
		Scan(&st.Active, &restart, &status, &st.SafeWALSize)
	if err == pgx.ErrNoRows {
		st.Error = "no such slot on the server"
		return st
	}
	if err != nil {
		st.Error = err.Error()
		return st
	}
	if restart != nil {
		st.RestartLSN = *restart
	}
	if status != nil {
		st.WALStatus = *status
	}
	return st
}

func printListing(w io.Writer, l listing) {
	if l.Meta == nil {
		fmt.Fprintln(w, "not a walship repository yet (no walship.json): archive or back up into it first")
		return
	}
	fmt.Fprintf(w, "repository  %s\ncluster     system identifier %s, %s WAL segments\n\n", l.Repository, l.Meta.SystemID, progress.Bytes(int64(l.Meta.SegmentSize)))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tPOSTGRESQL\tTIMELINE\tSTART LSN\tEND LSN\tSTARTED\tTOOK\tSIZE\tSTORED")
	for _, b := range l.Backups {
		fmt.Fprintf(tw, "%s\t%d.%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.PGVersion/10000, b.PGVersion%100, b.StartTLI, b.StartLSN, b.EndLSN,
			b.StartTime.Format("2006-01-02 15:04:05Z"), b.StopTime.Sub(b.StartTime).Round(time.Second), progress.Bytes(b.RawSize), progress.Bytes(b.StoredSize))
	}
	if len(l.Backups) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIMELINE\tFIRST SEGMENT\tLAST SEGMENT\tSEGMENTS\tWAL ENDS AT\tHOLES")
	for _, x := range l.WAL {
		holes := "none"
		if len(x.Missing) > 0 {
			holes = "MISSING " + strings.Join(x.Missing, ", ")
		}
		if len(x.Accepted) > 0 {
			holes += "; accepted gap " + strings.Join(x.Accepted, ", ")
		}
		end := x.End
		if x.Partial {
			end += " (timeline ended)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", x.Timeline, x.First, x.Last, x.Segments, end, holes)
	}
	tw.Flush()
	if len(l.Unfinished) > 0 {
		fmt.Fprintf(w, "\nunfinished backups (no backup.json; prune removes them): %s\n", strings.Join(l.Unfinished, ", "))
	}
	for id, err := range l.Invalid {
		fmt.Fprintf(w, "\nbackup %s is unreadable: %s\n", id, err)
	}
	if len(l.Backups) > 0 && len(l.Windows) == 0 {
		fmt.Fprintf(w, "\nno --to-time target yet: nothing committed after the oldest backup's end\n")
	}
	for _, win := range l.Windows {
		how := "exact, from the commit times in the WAL"
		if !win.Exact {
			how = "approximate, from backup and object times"
		}
		latest := ""
		if l.Window != nil && l.Window.Timeline == win.Timeline {
			latest = ", the latest"
		}
		fmt.Fprintf(w, "\ntimeline %d%s: --to-time from %s up to (not including) %s (%s)\n", win.Timeline, latest,
			win.From.Format(time.RFC3339Nano), win.To.Format(time.RFC3339Nano), how)
	}
	if l.NextBackup != "" {
		fmt.Fprintf(w, "\nnext backup due %s\n", l.NextBackup)
	}
	if s := l.Slot; s != nil {
		fmt.Fprintf(w, "\nslot %s: ", s.Name)
		if s.Error != "" {
			fmt.Fprintln(w, s.Error)
		} else {
			safe := "unlimited"
			if s.SafeWALSize != nil {
				safe = progress.Bytes(*s.SafeWALSize)
			}
			fmt.Fprintf(w, "active=%v restart_lsn=%s wal_status=%s safe_wal_size=%s\n", s.Active, s.RestartLSN, s.WALStatus, safe)
		}
	}
}
