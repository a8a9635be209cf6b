package scheduler

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walship/walship/storage/catalog"
)

func TestParseSchedule(t *testing.T) {
	for _, spec := range []string{"0 3 * * *", "*/30 * * * * *", "@daily", "@every 6h", "0 0 3 * * sun"} {
		if _, err := ParseSchedule(spec); err != nil {
			t.Errorf("ParseSchedule(%q): %v", spec, err)
		}
	}
	for _, spec := range []string{"", "daily", "61 * * * *", "* * *", "@every -1h", "@sometimes"} {
		if _, err := ParseSchedule(spec); err == nil {
			t.Errorf("ParseSchedule(%q) accepted", spec)
		}
	}
}

func TestBackupDue(t *testing.T) {
	daily, _ := ParseSchedule("0 3 * * *")
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	b := func(start string) catalog.Backup { return catalog.Backup{StartTime: at(start)} }
	cases := []struct {
		backups []catalog.Backup
		now     string
		due     bool
		next    string
	}{
		{nil, "2026-11-28T10:00:00Z", true, "2026-11-28T10:00:00Z"},
		{[]catalog.Backup{b("2026-11-28T03:00:05Z")}, "2026-11-28T10:00:00Z", false, "2026-11-29T03:00:00Z"},
		{[]catalog.Backup{b("2026-11-27T03:00:05Z")}, "2026-11-28T03:00:00Z", true, "2026-11-28T03:00:00Z"},
		{[]catalog.Backup{b("2026-11-20T03:00:05Z"), b("2026-11-27T03:00:05Z")}, "2026-11-28T02:59:59Z", false, "2026-11-28T03:00:00Z"},
	}
	for i, c := range cases {
		due, next := BackupDue(c.backups, daily, at(c.now))
		if due != c.due || !next.Equal(at(c.next)) {
			t.Errorf("case %d: due %v next %s, want %v %s", i, due, next, c.due, c.next)
		}
	}
}

func TestRunner(t *testing.T) {
	every, _ := ParseSchedule("@every 1s")
	r := NewRunner(nil)
	ctx, cancel := context.WithCancel(context.Background())
	var running, overlap, calls atomic.Int32
	r.Add(ctx, "slow", every, func(context.Context) error {
		if running.Add(1) > 1 {
			overlap.Add(1)
		}
		defer running.Add(-1)
		calls.Add(1)
		time.Sleep(1500 * time.Millisecond)
		return errors.New("boom")
	})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	time.Sleep(4200 * time.Millisecond)
	cancel()
	<-done
	if overlap.Load() != 0 {
		t.Error("a job ran twice at once")
	}
	st := r.Stats("slow")
	if calls.Load() < 2 || st.Runs != int(calls.Load()) || st.Failures != st.Runs || st.LastError != "boom" {
		t.Errorf("calls %d, stats %+v: want failures counted and the job retried", calls.Load(), st)
	}
}

// TestRunnerNext: a job's next time is known before the runner starts and
// while it runs.
func TestRunnerNext(t *testing.T) {
	hourly, _ := ParseSchedule("@every 1h")
	r := NewRunner(nil)
	ctx, cancel := context.WithCancel(context.Background())
	r.Add(ctx, "backup", hourly, func(context.Context) error { return nil })
	if got := r.Jobs(); len(got) != 1 || got[0] != "backup" {
		t.Errorf("Jobs() = %q", got)
	}
	check := func(when string) {
		t.Helper()
		next := r.Stats("backup").Next
		if d := time.Until(next); d < 59*time.Minute || d > time.Hour {
			t.Errorf("%s: next run %s, want in an hour", when, next)
		}
	}
	check("before Run")
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	time.Sleep(50 * time.Millisecond)
	check("while running")
	cancel()
	<-done
	if st := r.Stats("none"); !st.Next.IsZero() {
		t.Errorf("unknown job: %+v", st)
	}
}
