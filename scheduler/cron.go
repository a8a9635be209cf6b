package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/walship/walship/storage/catalog"
)

var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses a cron schedule: five fields (minute hour day month
// weekday), six with seconds first, or a descriptor (@daily, @hourly,
// @every 6h). Times are UTC, whatever the zone of the time given to Next,
// unless the schedule starts with CRON_TZ=zone. A schedule that never
// comes (February 30) is refused.
func ParseSchedule(spec string) (cron.Schedule, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("empty schedule")
	}
	if d, ok := strings.CutPrefix(spec, "@every "); ok {
		if v, err := time.ParseDuration(strings.TrimSpace(d)); err == nil && v < time.Second {
			return nil, fmt.Errorf("schedule %q: @every needs at least 1s", spec)
		}
	}
	// The cron parser slices past the zone without checking for the
	// schedule after it.
	zoned := strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=")
	if zoned && !strings.Contains(spec, " ") {
		return nil, fmt.Errorf("schedule %q: a time zone without a schedule after it", spec)
	}
	s, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %v; write five fields (minute hour day month weekday, e.g. \"0 3 * * *\"), six with seconds first, or @daily, @hourly, @every 6h", spec, err)
	}
	// Without CRON_TZ the parser leaves the zone to the time given to Next.
	if ss, ok := s.(*cron.SpecSchedule); ok && !zoned {
		ss.Location = time.UTC
	}
	// Next finds nothing past five years ahead: a day that no month has.
	if s.Next(time.Now()).IsZero() {
		return nil, fmt.Errorf("schedule %q never comes: no month has that day", spec)
	}
	return s, nil
}

// BackupDue decides from the repository alone whether a backup is due at
// now: none exists, or the schedule's first time after the newest backup
// started has come. It also returns when the next backup is due.
func BackupDue(backups []catalog.Backup, s cron.Schedule, now time.Time) (bool, time.Time) {
	var newest time.Time
	for _, b := range backups {
		if b.StartTime.After(newest) {
			newest = b.StartTime
		}
	}
	if newest.IsZero() {
		return true, now
	}
	next := s.Next(newest.UTC())
	if !next.After(now) {
		return true, next
	}
	return false, next
}

// Runner runs jobs on cron schedules inside a long-running process. A job
// still running at its next time is skipped, not doubled; a failed job is
// logged and counted and runs again at its next time.
type Runner struct {
	cron  *cron.Cron
	log   *slog.Logger
	mu    sync.Mutex
	runs  map[string]*Stats
	jobs  map[string]entry
	names []string // in the order added
}

// entry is where a job is in the cron table.
type entry struct {
	id    cron.EntryID
	sched cron.Schedule
}

// Stats counts a job's runs.
type Stats struct {
	Runs, Failures int
	LastError      string
	// Next is when the job runs next.
	Next time.Time
}

// NewRunner returns a runner that logs to log (nil discards).
func NewRunner(log *slog.Logger) *Runner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{
		cron: cron.New(cron.WithLocation(time.UTC), cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger))),
		log:  log,
		runs: map[string]*Stats{},
		jobs: map[string]entry{},
	}
}

// Add schedules job under name. ctx is the context every run gets.
func (r *Runner) Add(ctx context.Context, name string, s cron.Schedule, job func(context.Context) error) {
	st := &Stats{}
	r.mu.Lock()
	r.runs[name] = st
	r.mu.Unlock()
	var id cron.EntryID
	id = r.cron.Schedule(s, cron.FuncJob(func() {
		start := time.Now()
		err := job(ctx)
		r.mu.Lock()
		st.Runs++
		st.Next = r.cron.Entry(id).Next
		if err != nil {
			st.Failures++
			st.LastError = err.Error()
		}
		next := st.Next
		failures := st.Failures
		r.mu.Unlock()
		if err != nil {
			r.log.Error("scheduled job failed; it runs again at its next time", slog.String("job", name), slog.Any("error", err),
				slog.Int("failures", failures), slog.Time("next", next))
			return
		}
		r.log.Info("scheduled job done", slog.String("job", name), slog.Duration("took", time.Since(start)), slog.Time("next", next))
	}))
	r.mu.Lock()
	r.jobs[name] = entry{id: id, sched: s}
	r.names = append(r.names, name)
	r.mu.Unlock()
	r.log.Info("scheduled", slog.String("job", name), slog.Time("next", s.Next(time.Now().UTC())))
}

// Jobs names the jobs added, in the order they were.
func (r *Runner) Jobs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.names...)
}

// Stats returns a copy of name's counts, with when it runs next.
func (r *Runner) Stats(name string) Stats {
	r.mu.Lock()
	st, ok := r.runs[name]
	if !ok {
		r.mu.Unlock()
		return Stats{}
	}
	out, e := *st, r.jobs[name]
	r.mu.Unlock()
	// The cron table knows once it runs; before, the schedule does.
	if next := r.cron.Entry(e.id).Next; !next.IsZero() {
		out.Next = next
	} else if e.sched != nil {
		out.Next = e.sched.Next(time.Now().UTC())
	}
	return out
}

// Run runs the jobs until ctx is done, then waits for running ones.
func (r *Runner) Run(ctx context.Context) {
	r.cron.Start()
	<-ctx.Done()
	<-r.cron.Stop().Done()
}
