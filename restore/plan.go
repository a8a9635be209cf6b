package restore

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// TargetKind says where recovery stops.
type TargetKind int

// The recovery targets.
const (
	Latest    TargetKind = iota // the end of the archived WAL
	Immediate                   // the backup's consistency point
	ToTime
	ToLSN
	ToXID
	ToName
)

func (k TargetKind) String() string {
	return [...]string{"latest", "immediate", "time", "lsn", "xid", "name"}[k]
}

// Target is what a restore recovers to.
type Target struct {
	Kind      TargetKind
	Time      time.Time
	LSN       wal.LSN
	XID       uint64
	Name      string
	Exclusive bool // stop just before the target instead of just after
	// Timeline is the timeline to recover along; 0 chooses the one with the
	// newest WAL.
	Timeline wal.TimeLineID
	// Backup is the backup to restore; "" chooses the newest that suits.
	Backup string
}

// Event is a record a recovery target can stop at, from the repository's
// commit-time index.
type Event struct {
	TLI  wal.TimeLineID
	LSN  wal.LSN // where the record starts
	End  wal.LSN // where it ends: recovery reads that far to apply it
	Time time.Time
	XID  uint64
	Name string // a restore point's name; "" for a commit or abort
}

// Inventory is what planning knows of a repository.
type Inventory struct {
	SegmentSize uint64
	Backups     []catalog.Backup      // complete backups of this cluster
	Listing     catalog.BackupListing // everything under backups/, as listed
	Histories   map[wal.TimeLineID][]wal.HistoryEntry
	Extents     []catalog.Extent
	// Events, in WAL order per timeline, when the repository has the index;
	// nil when it has none, and planning falls back to backup times.
	Events []Event
	// IndexMissing counts the segments without an index, which leave
	// Events nil.
	IndexMissing int
}

// Plan is a restore decided before anything is downloaded.
type Plan struct {
	Backup   catalog.Backup
	Timeline wal.TimeLineID // recovery_target_timeline
	Path     []Step         // timelines replayed, oldest first
	// Stop is where recovery is expected to stop: the target's record or
	// LSN, the backup's end for immediate, the end of the WAL for latest.
	Stop wal.LSN
	// WALEnd is how far the WAL recovery may read must be complete.
	WALEnd wal.LSN
	Notes  []string // what planning assumed, for the log
}

// Step is one timeline of a recovery path: WAL of TLI from Begin to End.
type Step struct {
	TLI        wal.TimeLineID
	Begin, End wal.LSN // End is the switch to the next step; 0 on the last
}

// Window is the span of times a --to-time target may name.
type Window struct {
	From, To time.Time
	Exact    bool // from the commit-time index; otherwise from backup and object times
}

// PlanRestore chooses the backup and timeline for target and checks that the
// WAL recovery needs is in the repository. It reads nothing: inv says what
// the repository holds.
func PlanRestore(inv Inventory, target Target) (Plan, error) {
	if inv.SegmentSize == 0 {
		return Plan{}, errors.New("plan: the repository's segment size is unknown")
	}
	tli := target.Timeline
	if tli == 0 {
		tli = latestTimeline(inv)
		if tli == 0 {
			return Plan{}, errors.New("the repository holds no WAL; nothing can be restored (is an archiver running?)")
		}
	}
	path, err := timelinePath(inv, tli)
	if err != nil {
		return Plan{}, err
	}
	candidates := onPath(inv.Backups, path)
	if target.Backup != "" {
		i := slices.IndexFunc(inv.Backups, func(b catalog.Backup) bool { return b.ID == target.Backup })
		if i < 0 {
			return Plan{}, fmt.Errorf("backup %s is not in the repository (walship list shows the backups)", target.Backup)
		}
		if !slices.ContainsFunc(candidates, func(b catalog.Backup) bool { return b.ID == target.Backup }) {
			return Plan{}, fmt.Errorf("backup %s is not on the WAL history of timeline %d: %s", target.Backup, tli, describePath(path))
		}
		candidates = []catalog.Backup{inv.Backups[i]}
	}
	if len(candidates) == 0 {
		return Plan{}, fmt.Errorf("no backup lies on the history of timeline %d (%s); take a backup, or choose another --timeline", tli, describePath(path))
	}
	p := Plan{Timeline: tli, Path: path}
	walEnd := pathEnd(inv, path)
	events := eventsOn(inv.Events, path)
	stop, chosen, err := chooseBackup(inv, target, candidates, events, walEnd, &p.Notes)
	if err != nil {
		return Plan{}, err
	}
	p.Backup, p.Stop = chosen, stop
	p.WALEnd = stop
	switch {
	case target.Kind == ToLSN:
		p.WALEnd = stop + 1 // the segment holding the LSN
	case events != nil:
		// The record recovery stops at, whole.
		if i := slices.IndexFunc(events, func(e Event) bool { return e.LSN == stop }); i >= 0 && events[i].End > stop {
			p.WALEnd = events[i].End
		}
	}
	if target.Kind == Latest || (target.Kind != Immediate && target.Kind != ToLSN && inv.Events == nil) {
		p.WALEnd = walEnd // recovery reads to the end, or may
	}
	p.Path = trimPath(path, chosen.StartLSN)
	if err := checkWAL(inv, p.Path, chosen.StartLSN, p.WALEnd); err != nil {
		return Plan{}, err
	}
	return p, nil
}

// chooseBackup picks the newest candidate the target can be reached from and
// says where recovery will stop.
func chooseBackup(inv Inventory, target Target, candidates []catalog.Backup, events []Event, walEnd wal.LSN, notes *[]string) (wal.LSN, catalog.Backup, error) {
	newest := candidates[len(candidates)-1]
	switch target.Kind {
	case Latest:
		if walEnd < newest.EndLSN {
			return 0, catalog.Backup{}, fmt.Errorf("the WAL of backup %s ends at %s but the repository's WAL ends at %s; wait for the archiver to store it", newest.ID, newest.EndLSN, walEnd)
		}
		return walEnd, newest, nil
	case Immediate:
		return newest.EndLSN, newest, nil
	case ToLSN:
		for _, b := range slices.Backward(candidates) {
			if b.EndLSN <= target.LSN {
				// Recovery stops at the first record at or after the
				// LSN, which must be there.
				if target.LSN >= walEnd {
					return 0, catalog.Backup{}, fmt.Errorf("LSN %s is at or past the end of the archived WAL (%s)", target.LSN, walEnd)
				}
				return target.LSN, b, nil
			}
		}
		return 0, catalog.Backup{}, fmt.Errorf("LSN %s is before the end of the oldest usable backup (%s at %s); the earliest LSN that can be recovered to is %s", target.LSN, candidates[0].ID, candidates[0].EndLSN, candidates[0].EndLSN)
	case ToTime:
		w := window(inv, candidates, events, walEnd)
		if target.Time.Before(w.From) || !target.Time.Before(w.To) {
			return 0, catalog.Backup{}, fmt.Errorf("%s is outside the recoverable window %s; choose a time inside it", target.Time.UTC().Format(time.RFC3339Nano), w)
		}
		if events == nil {
			*notes = append(*notes, noIndex(inv)+": the backup was chosen by its stop time")
			for _, b := range slices.Backward(candidates) {
				if !b.StopTime.After(target.Time) {
					return walEnd, b, nil
				}
			}
			return walEnd, candidates[0], nil
		}
		for _, b := range slices.Backward(candidates) {
			// The backup holds every commit before its end: none may be
			// past the target.
			if pastTarget(events, b.EndLSN, target) {
				continue
			}
			if stop, ok := timeStop(events, b.EndLSN, target); ok {
				return stop, b, nil
			}
		}
		return 0, catalog.Backup{}, fmt.Errorf("%s is before the end of every usable backup; the recoverable window is %s", target.Time.UTC().Format(time.RFC3339Nano), w)
	case ToXID, ToName:
		what := fmt.Sprintf("transaction %d", target.XID)
		if target.Kind == ToName {
			what = fmt.Sprintf("restore point %q", target.Name)
		}
		if events == nil {
			*notes = append(*notes, noIndex(inv)+": restoring the oldest backup on the path, which precedes any "+what)
			return walEnd, candidates[0], nil
		}
		for _, b := range slices.Backward(candidates) {
			i := slices.IndexFunc(events, func(e Event) bool {
				if e.LSN < b.StartLSN {
					return false
				}
				if target.Kind == ToName {
					return e.Name == target.Name
				}
				return e.Name == "" && uint32(e.XID) == uint32(target.XID) // PostgreSQL compares 32-bit xids
			})
			if i < 0 {
				continue
			}
			if events[i].LSN >= b.EndLSN {
				return events[i].LSN, b, nil
			}
		}
		if !slices.ContainsFunc(events, func(e Event) bool {
			return (target.Kind == ToName && e.Name == target.Name) || (target.Kind == ToXID && e.Name == "" && uint32(e.XID) == uint32(target.XID))
		}) {
			return 0, catalog.Backup{}, fmt.Errorf("%s is not in the archived WAL of timeline %d's history", what, candidates[0].EndTLI)
		}
		return 0, catalog.Backup{}, fmt.Errorf("%s comes before the end of every usable backup (the oldest, %s, ends at %s)", what, candidates[0].ID, candidates[0].EndLSN)
	}
	return 0, catalog.Backup{}, fmt.Errorf("unknown target kind %d", target.Kind)
}

// stopsAt tells whether a commit or abort at time t stops recovery to a
// time target: later than it, or at it when exclusive, as PostgreSQL
// decides.
func stopsAt(t time.Time, target Target) bool {
	return t.After(target.Time) || (target.Exclusive && t.Equal(target.Time))
}

// timeStop is where a time target stops recovery after from: the first
// commit or abort from there that stopsAt.
func timeStop(events []Event, from wal.LSN, target Target) (wal.LSN, bool) {
	for _, e := range events {
		if e.LSN >= from && e.Name == "" && stopsAt(e.Time, target) {
			return e.LSN, true
		}
	}
	return 0, false
}

// pastTarget tells whether a commit or abort before end already stopsAt the
// target: a backup ending at end holds a state after the target.
func pastTarget(events []Event, end wal.LSN, target Target) bool {
	for _, e := range events {
		if e.LSN < end && e.Name == "" && stopsAt(e.Time, target) {
			return true
		}
	}
	return false
}

// RecoverableWindow is the span of --to-time targets along timeline tli (0:
// the timeline with the newest WAL), or false when nothing can be recovered.
func RecoverableWindow(inv Inventory, tli wal.TimeLineID) (Window, bool) {
	if tli == 0 {
		tli = latestTimeline(inv)
	}
	path, err := timelinePath(inv, tli)
	if err != nil {
		return Window{}, false
	}
	candidates := onPath(inv.Backups, path)
	if len(candidates) == 0 {
		return Window{}, false
	}
	w := window(inv, candidates, eventsOn(inv.Events, path), pathEnd(inv, path))
	return w, w.From.Before(w.To)
}

// window: a time target T is reachable from backup B when no commit before
// B's end is later than T, and some commit after it is.
func window(inv Inventory, candidates []catalog.Backup, events []Event, walEnd wal.LSN) Window {
	oldest := candidates[0]
	if events == nil {
		w := Window{From: oldest.StopTime}
		for _, e := range inv.Extents {
			if e.Newest.After(w.To) {
				w.To = e.Newest
			}
		}
		return w
	}
	// From the newest commit the oldest backup holds to the newest commit
	// stored: a target T needs no commit later than T before the backup's
	// end, and one after it.
	w := Window{From: oldest.StartTime.Truncate(time.Microsecond), Exact: true}
	for _, e := range events {
		if e.Name != "" || e.LSN >= walEnd {
			continue
		}
		if e.LSN < oldest.EndLSN && e.Time.After(w.From) {
			w.From = e.Time
		}
		if e.Time.After(w.To) {
			w.To = e.Time
		}
	}
	return w
}

func (w Window) String() string {
	how := "from backup and object times; approximate"
	if w.Exact {
		how = "from the commit times in the WAL"
	}
	if !w.From.Before(w.To) {
		return "empty (" + how + ")"
	}
	return fmt.Sprintf("[%s, %s) (%s)", w.From.UTC().Format(time.RFC3339Nano), w.To.UTC().Format(time.RFC3339Nano), how)
}

// latestTimeline is the timeline with the most recently stored WAL, the
// higher one on a tie: a stray higher timeline whose WAL stopped (a test
// restore that promoted, say) does not take over from the one an archiver
// still writes.
func latestTimeline(inv Inventory) wal.TimeLineID {
	var best catalog.Extent
	for _, e := range inv.Extents {
		if e.TLI == 0 || (e.Segments == 0 && e.TipEnd == 0) {
			continue
		}
		if best.TLI == 0 || e.Newest.After(best.Newest) || (e.Newest.Equal(best.Newest) && e.TLI > best.TLI) {
			best = e
		}
	}
	return best.TLI
}

// timelinePath is tli's history as steps, oldest first.
func timelinePath(inv Inventory, tli wal.TimeLineID) ([]Step, error) {
	if tli == 1 {
		return []Step{{TLI: 1}}, nil
	}
	hist, ok := inv.Histories[tli]
	if !ok {
		return nil, fmt.Errorf("timeline %d has no history file in the repository (%s is missing); choose another --timeline", tli, catalog.HistoryKey(tli))
	}
	var path []Step
	var begin wal.LSN
	for _, h := range hist {
		path = append(path, Step{TLI: h.TLI, Begin: begin, End: h.Switch})
		begin = h.Switch
	}
	return append(path, Step{TLI: tli, Begin: begin}), nil
}

func describePath(path []Step) string {
	var parts []string
	for _, s := range path {
		if s.End == 0 {
			parts = append(parts, fmt.Sprintf("timeline %d from %s", s.TLI, s.Begin))
		} else {
			parts = append(parts, fmt.Sprintf("timeline %d until %s", s.TLI, s.End))
		}
	}
	return strings.Join(parts, ", then ")
}

// onPath keeps the backups whose WAL from start to end lies on path, oldest
// first.
func onPath(backups []catalog.Backup, path []Step) []catalog.Backup {
	var out []catalog.Backup
	for _, b := range backups {
		if stepAt(path, wal.TimeLineID(b.StartTLI), b.StartLSN) && stepAt(path, wal.TimeLineID(b.EndTLI), b.EndLSN) {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b catalog.Backup) int {
		if c := int64(a.EndLSN) - int64(b.EndLSN); c != 0 {
			return int(min(max(c, -1), 1))
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// stepAt tells whether position lsn of timeline tli is on path.
func stepAt(path []Step, tli wal.TimeLineID, lsn wal.LSN) bool {
	for _, s := range path {
		if s.TLI == tli && lsn >= s.Begin && (s.End == 0 || lsn <= s.End) {
			return true
		}
	}
	return false
}

// trimPath drops the steps that end before from.
func trimPath(path []Step, from wal.LSN) []Step {
	for len(path) > 1 && path[0].End != 0 && path[0].End <= from {
		path = path[1:]
	}
	return path
}

// eventsOn keeps the events on path, in WAL order.
func eventsOn(events []Event, path []Step) []Event {
	if events == nil {
		return nil
	}
	out := []Event{}
	for _, e := range events {
		if stepAt(path, e.TLI, e.LSN) {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b Event) int { return int(min(max(int64(a.LSN)-int64(b.LSN), -1), 1)) })
	return out
}

func extentOf(inv Inventory, tli wal.TimeLineID) (catalog.Extent, bool) {
	for _, e := range inv.Extents {
		if e.TLI == tli {
			return e, true
		}
	}
	return catalog.Extent{}, false
}

// pathEnd is where the archived WAL of path's last timeline ends.
func pathEnd(inv Inventory, path []Step) wal.LSN {
	e, ok := extentOf(inv, path[len(path)-1].TLI)
	if !ok {
		return path[len(path)-1].Begin
	}
	return max(e.End(inv.SegmentSize), path[len(path)-1].Begin)
}

// checkWAL checks that every segment recovery reads from from to end along
// path is stored.
func checkWAL(inv Inventory, path []Step, from, end wal.LSN) error {
	seg, ok := missingSegment(inv, path, from, end)
	if !ok {
		return nil
	}
	segSize := inv.SegmentSize
	return fmt.Errorf("WAL segment %s, which recovery to %s needs, is not in the repository; recovery would end there early. Choose a target before %s (--to-lsn), or check the archiver (walship list shows the gaps)", seg.Name(segSize), end, seg.Start(segSize))
}

// missingSegment is the first segment recovery from from to end along path
// needs that is not stored. Recovery reads the segment holding a switch
// point from the new timeline.
func missingSegment(inv Inventory, path []Step, from, end wal.LSN) (wal.Segment, bool) {
	segSize := inv.SegmentSize
	for i, s := range path {
		first := uint64(max(from, s.Begin)) / segSize
		last := uint64(end) / segSize
		if end > 0 && uint64(end)%segSize == 0 {
			last-- // end is exclusive
		}
		if i+1 < len(path) {
			if uint64(path[i+1].Begin)/segSize == 0 {
				continue
			}
			last = min(last, uint64(path[i+1].Begin)/segSize-1)
		}
		if first > last {
			continue
		}
		e, _ := extentOf(inv, s.TLI)
		for no := first; no <= last; no++ {
			if !hasSegment(e, no, segSize) {
				return wal.Segment{TLI: s.TLI, No: no}, true
			}
		}
	}
	return wal.Segment{}, false
}

// hasSegment tells whether segment no of e's timeline is stored, whole or,
// at the tip, in pieces.
func hasSegment(e catalog.Extent, no uint64, segSize uint64) bool {
	if e.TipEnd > 0 && uint64(e.TipEnd-1)/segSize == no {
		return true
	}
	if e.Segments == 0 || no < e.First || no > e.Last {
		return false
	}
	for _, m := range slices.Concat(e.Missing, e.Lost) {
		if no >= m.From && no <= m.To {
			return false
		}
	}
	return true
}

func noIndex(inv Inventory) string {
	if inv.IndexMissing > 0 {
		return fmt.Sprintf("the commit-time index is incomplete (%d segments without one)", inv.IndexMissing)
	}
	return "no commit-time index"
}
