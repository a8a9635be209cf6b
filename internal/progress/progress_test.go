package progress

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestStatus(t *testing.T) {
	m := Start("restore", 4<<30, io.Discard, nil)
	defer m.Stop()
	m.start = time.Now().Add(-2 * time.Second)
	m.Add(1 << 30)
	got := m.Status()
	for _, want := range []string{"restore 1.0 GiB of 4.0 GiB (25%)", "MiB/s", "s left"} {
		if !strings.Contains(got, want) {
			t.Errorf("Status = %q, want %q in it", got, want)
		}
	}
	m.SetTotal(0)
	if got := m.Status(); strings.Contains(got, "left") || strings.Contains(got, "%") {
		t.Errorf("Status without a total = %q", got)
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 40: "5.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestLogLines checks that without a terminal the meter logs, and that
// Reader counts what is read through it.
func TestLogLines(t *testing.T) {
	var logs bytes.Buffer
	m := Start("backup", 0, &bytes.Buffer{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if n, _ := io.Copy(io.Discard, m.Reader(strings.NewReader(strings.Repeat("x", 3000)))); n != 3000 {
		t.Fatal(n)
	}
	m.report()
	m.Stop()
	if !strings.Contains(logs.String(), "msg=progress") || !strings.Contains(logs.String(), "bytes=3000") {
		t.Errorf("log: %s", logs.String())
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) || IsTerminal(&bytes.Buffer{}) {
		t.Error("a file or a buffer taken for a terminal")
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		defer tty.Close()
		if !IsTerminal(tty) {
			t.Error("/dev/tty not taken for a terminal")
		}
	}
}

// TestTerminal checks that output through a Terminal clears the status
// line first, so that a log line never runs on from it.
func TestTerminal(t *testing.T) {
	var out bytes.Buffer
	term := NewTerminal(&out)
	m := Start("restore", 100, term, nil)
	m.Add(50)
	m.report()
	term.Write([]byte("a log line\n"))
	m.report()
	m.Stop()
	rate := regexp.MustCompile(`[0-9.]+ [KMGT]?i?B/s, [0-9a-z.]+ left`)
	status := rate.ReplaceAllString(m.Status(), "R")
	want := clearLine + status + clearLine + "a log line\n" + clearLine + status + clearLine
	if got := rate.ReplaceAllString(out.String(), "R"); got != want {
		t.Errorf("terminal got %q\nwant %q", out.String(), want)
	}
}
