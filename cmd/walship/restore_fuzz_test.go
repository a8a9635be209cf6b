package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/restore"
)

// zoneSuffix is how an input that names its zone ends.
var zoneSuffix = regexp.MustCompile(`(Z|[ ]UTC|[+-][0-9]{2}(:[0-9]{2})?)$`)

// FuzzParseTargetTime checks --to-time: it never panics; a time it accepts
// names its zone, is whole microseconds, and reads back as the same
// instant from recovery_target_time as restore writes it into
// postgresql.auto.conf.
func FuzzParseTargetTime(f *testing.F) {
	for _, s := range []string{
		"2026-11-28T10:15:00.123Z", "2026-11-28T10:15:00.1234567+05:30", "2026-11-28 10:15:00+00",
		"2026-11-28 10:15:00.999999999-08", "2026-11-28 10:15:00 +01:00", "2026-11-28 10:15:00 UTC",
		"2026-11-28 10:15:00 CET", "2026-11-28 10:15:00", "2026-11-28T10:15:00", "2026-02-30 10:15:00Z",
		"0001-01-01 00:00:00+00", "9999-12-31T23:59:59.999999999Z", "0001-01-01T00:30:00+01:00", "9999-12-31 23:30:00-01", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseTargetTime(s)
		if err != nil {
			return
		}
		if !zoneSuffix.MatchString(s) {
			t.Fatalf("parseTargetTime(%q) = %v, though it names no zone", s, got)
		}
		if got.Nanosecond()%1000 != 0 {
			t.Fatalf("parseTargetTime(%q) = %v, not whole microseconds", s, got)
		}
		written := recoveryTargetTime(t, got)
		back, err := parseTargetTime(written)
		if err != nil || !back.Equal(got) {
			t.Fatalf("parseTargetTime(%q) = %v, written as %q, which reads back as %v, %v", s, got, written, back, err)
		}
	})
}

// recoveryTargetTime returns the recovery_target_time restore writes for a
// recovery to at.
func recoveryTargetTime(t *testing.T, at time.Time) string {
	t.Helper()
	dir := t.TempDir()
	r := restore.Recovery{RestoreCommand: "false", Target: restore.Target{Kind: restore.ToTime, Time: at}}
	if err := restore.WriteRecovery(dir, r); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for sc := bufio.NewScanner(bytes.NewReader(conf)); sc.Scan(); {
		v, ok := strings.CutPrefix(sc.Text(), "recovery_target_time = '")
		if ok && v != "'" {
			return strings.TrimSuffix(v, "'")
		}
	}
	t.Fatalf("no recovery_target_time in postgresql.auto.conf:\n%s", conf)
	return ""
}
