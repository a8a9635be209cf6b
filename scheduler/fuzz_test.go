package scheduler

import (
	"strings"
	"testing"
	"time"
)

// FuzzParseSchedule checks that ParseSchedule never panics on a --schedule
// or --backup-schedule value, and that a schedule it accepts comes: from
// any moment of these years its next time is later, in UTC, as BackupDue
// and the runner need, and the same whatever the zone of the moment.
func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{
		"0 3 * * *", "*/30 * * * * *", "@daily", "@hourly", "@every 6h", "@every 1s", "0 0 3 * * sun",
		"0 0 29 2 *", "0 0 29 2 mon", "59 23 31 12 *", "0 0 * * 7", "1-5/2 0 1,15 jan-mar mon-fri",
		"", "daily", "61 * * * *", "* * *", "@every -1h", "@every 500ms", "@every 0s", "@sometimes", "@every 2562047h",
		"CRON_TZ=UTC 0 3 * * *", "TZ=Europe/Paris 0 3 * * *", "TZ=../../etc/passwd 0 3 * * *",
		"* * * * * * *", "*/0 * * * *", "0-59/60 * * * *", "? ? ? ? ?",
	} {
		f.Add(s)
	}
	refs := []time.Time{
		time.Date(2026, 11, 28, 10, 15, 0, 123, time.UTC),
		time.Date(2027, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2028, 2, 29, 0, 0, 0, 0, time.FixedZone("x", -11*3600)),
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := ParseSchedule(spec)
		if err != nil {
			if !strings.Contains(err.Error(), "schedule") {
				t.Errorf("ParseSchedule(%q): error %q does not say what it is about", spec, err)
			}
			return
		}
		for _, ref := range refs {
			next := s.Next(ref)
			if !next.After(ref) || !next.Equal(s.Next(ref.UTC())) {
				t.Fatalf("ParseSchedule(%q).Next(%v) = %v, Next(%v) = %v: want the same later time", spec, ref, next, ref.UTC(), s.Next(ref.UTC()))
			}
		}
	})
}
