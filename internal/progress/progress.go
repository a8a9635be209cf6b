package progress

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Intervals between reports.
const (
	TerminalEvery = 250 * time.Millisecond
	LogEvery      = 10 * time.Second
)

// Meter counts a job's bytes and reports them until Stop. Its methods may
// be called from several goroutines.
type Meter struct {
	what  string
	total atomic.Int64
	done  atomic.Int64
	start time.Time
	tty   *Terminal // nil: log lines instead
	log   *slog.Logger
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

// Start starts reporting the progress of what, total bytes long (0 if not
// known yet): redrawn on w when w is a terminal, else logged on log.
func Start(what string, total int64, w io.Writer, log *slog.Logger) *Meter {
	m := &Meter{what: what, start: time.Now(), log: log, stop: make(chan struct{})}
	m.total.Store(total)
	every := LogEvery
	if t, ok := w.(*Terminal); ok {
		m.tty, every = t, TerminalEvery
	} else if IsTerminal(w) {
		m.tty, every = NewTerminal(w), TerminalEvery
	}
	m.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.report()
			}
		}
	})
	return m
}

// IsTerminal tells whether w is a terminal (or a Terminal).
func IsTerminal(w io.Writer) bool {
	if _, ok := w.(*Terminal); ok {
		return true
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Add counts n more bytes done.
func (m *Meter) Add(n int64) { m.done.Add(n) }

// SetTotal sets the job's size once it is known.
func (m *Meter) SetTotal(n int64) { m.total.Store(n) }

// Reader counts the bytes read from r.
func (m *Meter) Reader(r io.Reader) io.Reader { return &reader{r, m} }

type reader struct {
	r io.Reader
	m *Meter
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.m.Add(int64(n))
	return n, err
}

// Stop ends the reports; on a terminal the status line is cleared.
func (m *Meter) Stop() {
	m.once.Do(func() {
		close(m.stop)
		m.wg.Wait()
		if m.tty != nil {
			m.tty.clear()
		}
	})
}

// Status is the report as one line: "restore 812 MiB of 1.5 GiB (54%),
// 210 MiB/s, 3s left".
func (m *Meter) Status() string {
	done, total := m.done.Load(), m.total.Load()
	elapsed := time.Since(m.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed
	}
	s := m.what + " " + Bytes(done)
	if total > 0 {
		s += fmt.Sprintf(" of %s (%d%%)", Bytes(total), min(100, done*100/total))
	}
	s += ", " + Bytes(int64(rate)) + "/s"
	if total > done && rate > 0 {
		s += ", " + time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second).String() + " left"
	}
	return s
}

func (m *Meter) report() {
	if m.tty != nil {
		m.tty.draw(m.Status())
		return
	}
	if m.log != nil {
		m.log.Info("progress", slog.String("status", m.Status()), slog.Int64("bytes", m.done.Load()), slog.Int64("total_bytes", m.total.Load()))
	}
}

// Bytes prints n in binary units: "1.5 GiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Terminal is a terminal that a status line shares with other output (log
// lines): a write clears the status line first, and the next report draws
// it again below what was written.
type Terminal struct {
	mu    sync.Mutex
	w     io.Writer
	drawn bool
}

// NewTerminal wraps the terminal w.
func NewTerminal(w io.Writer) *Terminal { return &Terminal{w: w} }

// clearLine is the carriage return and erase-line sequence.
const clearLine = "\r\033[K"

func (t *Terminal) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.drawn {
		t.drawn = false
		if _, err := io.WriteString(t.w, clearLine); err != nil {
			return 0, err
		}
	}
	return t.w.Write(p)
}

func (t *Terminal) draw(status string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, _ = io.WriteString(t.w, clearLine+status)
	t.drawn = true
}

func (t *Terminal) clear() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.drawn {
		_, _ = io.WriteString(t.w, clearLine)
		t.drawn = false
	}
}
