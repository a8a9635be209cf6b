package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/scheduler"
)

// token stands for the secret part of a heartbeat URL: it must never be
// logged.
const token = "hb-s3cr3t-7f3a9"

// syncBuffer is a bytes.Buffer that a running command writes to while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// running is walship run in-process in the background.
type running struct {
	stderr *syncBuffer
	cancel context.CancelFunc
	code   chan int
}

func start(t *testing.T, args ...string) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{stderr: &syncBuffer{}, cancel: cancel, code: make(chan int, 1)}
	go func() { r.code <- run(ctx, append([]string{"walship"}, args...), io.Discard, r.stderr) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop stops it as SIGTERM would and returns its exit code.
func (r *running) stop(t *testing.T) int {
	r.cancel()
	select {
	case code := <-r.code:
		r.code <- code
		return code
	case <-time.After(2 * time.Minute):
		t.Fatalf("walship did not stop; its log:\n%s", r.stderr)
		return -1
	}
}

var addrRE = regexp.MustCompile(`serving /metrics.* addr=(\S+)`)

// metricsURL waits for the command to log where it serves metrics.
func (r *running) metricsURL(t *testing.T) string {
	var url string
	eventually(t, "the metrics address in the log", func() bool {
		if m := addrRE.FindStringSubmatch(r.stderr.String()); m != nil {
			url = "http://" + m[1]
		}
		return url != ""
	})
	return url
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads /metrics: each series by name, with its labels appended as
// {k="v",...}.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			out[key] = value(f.GetType(), m)
		}
	}
	return out
}

func value(t dto.MetricType, m *dto.Metric) float64 {
	switch t {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_UNTYPED:
		return m.GetUntyped().GetValue()
	}
	return -1
}

// heartbeatServer counts GETs of /ping/<token>, failing every third.
func heartbeatServer(t *testing.T) (*httptest.Server, *atomic.Int32) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/ping/"+token {
			t.Errorf("heartbeat: %s %s", r.Method, r.URL.Path)
		}
		if hits.Add(1)%3 == 0 {
			http.Error(w, "try later", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// TestMetrics runs the archiver with --metrics-addr, --heartbeat-url and a
// backup schedule while rows are written, stops and starts the primary under
// it, and lets a second archiver wait for its lease: the metrics follow,
// /readyz says 200 only while streaming with the lease, and the heartbeat is
// pinged without its token ever being logged.
func TestMetrics(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	hb, hits := heartbeatServer(t)
	a := start(t, "--repo", repo, "--log-level", "debug", "archive", "--pg", c.ConnString(), "--sync-interval", "50ms",
		"--metrics-addr", "127.0.0.1:0", "--heartbeat-url", hb.URL+"/ping/"+token, "--heartbeat-interval", "200ms",
		"--backup-schedule", "@every 5s", "--backup-fast")
	base := a.metricsURL(t)
	if code, body := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	ready := func(base string) (bool, string) {
		code, body := get(t, base+"/readyz")
		return code == http.StatusOK, body
	}
	eventually(t, "/readyz 200", func() bool { ok, _ := ready(base); return ok })

	// Rows written: the shipped position reaches what the primary flushed,
	// and the lag goes back to 0.
	c.Exec(t, "CREATE TABLE t (id serial PRIMARY KEY, v text)")
	for range 5 {
		c.Exec(t, "INSERT INTO t (v) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 1000) g")
	}
	c.Exec(t, "SELECT pg_switch_wal()")
	c.Exec(t, "INSERT INTO t (v) VALUES ('tail')")
	target, err := wal.ParseLSN(c.Scalar(t, "SELECT pg_current_wal_flush_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]float64
	eventually(t, "the metrics to catch up", func() bool {
		m = scrape(t, base)
		return m["walship_shipped_lsn"] >= float64(target) && m["walship_acknowledged_lsn"] >= float64(target) &&
			m["walship_lag_bytes"] == 0 && m["walship_lag_seconds"] == 0
	})
	for name := range metricHelp {
		switch {
		case strings.HasPrefix(name, "walship_backup_last_"), strings.HasPrefix(name, "walship_scheduled_"), name == "walship_slot_safe_wal_size_bytes":
			continue // no backup, no schedule, max_slot_wal_keep_size unlimited
		}
		found := false
		for k := range m {
			found = found || k == name || strings.HasPrefix(k, name+"{")
		}
		if !found {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	for name, want := range map[string]float64{
		"walship_streaming": 1, "walship_lease_held": 1, "walship_timeline": 1, "walship_slot_query_error": 0, "walship_slot_active": 1,
		`walship_slot_wal_status{status="reserved"}`: 1, `walship_slot_wal_status{status="lost"}`: 0, "walship_upload_errors_total": 0,
		`walship_build_info{version="dev"}`: 1,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	for _, name := range []string{"walship_segments_shipped_total", "walship_pieces_shipped_total", "walship_shipped_bytes_total", "walship_uploaded_bytes_total", "walship_server_flush_lsn", "walship_received_lsn"} {
		if m[name] <= 0 {
			t.Errorf("%s = %v, want it to have moved", name, m[name])
		}
	}
	if now := float64(time.Now().Unix()); m["walship_last_shipped_timestamp_seconds"] < now-60 || m["walship_last_shipped_timestamp_seconds"] > now+1 {
		t.Errorf("walship_last_shipped_timestamp_seconds = %v, now %v", m["walship_last_shipped_timestamp_seconds"], now)
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	eventually(t, "heartbeats", func() bool { return hits.Load() >= 3 })

	// A scheduled backup: counted, described, and the next one announced.
	eventually(t, "a scheduled backup", func() bool {
		m = scrape(t, base)
		return m["walship_backups_total"] >= 1
	})
	now := float64(time.Now().Unix())
	for name, ok := range map[string]bool{
		"walship_backup_last_success_timestamp_seconds":              m["walship_backup_last_success_timestamp_seconds"] > now-60,
		"walship_backup_last_duration_seconds":                       m["walship_backup_last_duration_seconds"] > 0,
		"walship_backup_last_size_bytes":                             m["walship_backup_last_size_bytes"] > 1<<20,
		"walship_backup_last_stored_bytes":                           m["walship_backup_last_stored_bytes"] > 0,
		`walship_scheduled_next_run_timestamp_seconds{job="backup"}`: m[`walship_scheduled_next_run_timestamp_seconds{job="backup"}`] > now-1,
		`walship_scheduled_runs_total{job="backup"}`:                 m[`walship_scheduled_runs_total{job="backup"}`] >= 1,
	} {
		if !ok {
			t.Errorf("after a scheduled backup: %s = %v", name, m[name])
		}
	}
	if _, ok := m[`walship_scheduled_failures_total{job="backup"}`]; !ok {
		t.Error(`no walship_scheduled_failures_total{job="backup"}`)
	}
	eventually(t, "a heartbeat after the backup", func() bool { return strings.Contains(a.stderr.String(), `after=backup`) })

	// The primary stops: not ready while the archiver reconnects; ready
	// again once it streams.
	c.Stop(t)
	eventually(t, "/readyz 503 without a primary", func() bool {
		ok, body := ready(base)
		return !ok && strings.Contains(body, "not streaming")
	})
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while reconnecting: %d", code)
	}
	m = scrape(t, base)
	if m["walship_streaming"] != 0 || m["walship_lease_held"] != 1 || m["walship_reconnects_total"] < 1 {
		t.Errorf("while reconnecting: streaming %v, lease %v, reconnects %v", m["walship_streaming"], m["walship_lease_held"], m["walship_reconnects_total"])
	}
	c.Start(t)
	eventually(t, "/readyz 200 again", func() bool { ok, _ := ready(base); return ok })

	// A second archiver waits for the lease: alive, not ready; ready once
	// the first stops. Its heartbeat goes nowhere, and fails quietly.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	b := start(t, "--repo", repo, "archive", "--pg", c.ConnString(), "--wait", "--metrics-addr", "127.0.0.1:0",
		"--heartbeat-url", dead.URL+"/ping/"+token, "--heartbeat-interval", "100ms")
	second := b.metricsURL(t)
	eventually(t, "the second archiver to wait", func() bool { return strings.Contains(b.stderr.String(), "lease is held; waiting") })
	if ok, body := ready(second); ok || !strings.Contains(body, "lease") {
		t.Errorf("/readyz of a waiting archiver: %v %q", ok, body)
	}
	if code, _ := get(t, second+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz of a waiting archiver: %d", code)
	}
	if code := a.stop(t); code != exitOK {
		t.Errorf("first archiver: exit %d\n%s", code, a.stderr)
	}
	eventually(t, "the second archiver to be ready", func() bool { ok, _ := ready(second); return ok })
	eventually(t, "a failed heartbeat", func() bool { return strings.Contains(b.stderr.String(), "heartbeat failed") })
	if code := b.stop(t); code != exitOK {
		t.Errorf("second archiver: exit %d\n%s", code, b.stderr)
	}

	logs := a.stderr.String() + b.stderr.String()
	if strings.Contains(logs, token) {
		t.Errorf("the heartbeat token was logged:\n%s", logs)
	}
	for _, want := range []string{"heartbeat sent", "heartbeat failed", "heartbeat=" + hb.URL + " ", "heartbeat=" + dead.URL + " "} {
		if !strings.Contains(logs, want) {
			t.Errorf("the logs lack %q:\n%s", want, logs)
		}
	}
}

// TestBackupHeartbeat: walship backup pings the heartbeat after a backup.
func TestBackupHeartbeat(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	hb, hits := heartbeatServer(t)
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	code, _, errOut := walship(t, nil, "--repo", repo, "backup", "--pg", c.ConnString(), "--fast", "--heartbeat-url", hb.URL+"/ping/"+token)
	if code != exitOK || hits.Load() != 1 {
		t.Fatalf("backup: exit %d, %d heartbeats\n%s", code, hits.Load(), errOut)
	}
	if strings.Contains(errOut, token) {
		t.Errorf("the heartbeat token was logged:\n%s", errOut)
	}
}

func TestMonitoringUsageErrors(t *testing.T) {
	repo := "file://" + t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"archive", "--metrics-addr", "9187"}, "--metrics-addr"},
		{[]string{"archive", "--heartbeat-url", "ftp://hc.example/" + token}, "--heartbeat-url: want an http"},
		{[]string{"archive", "--heartbeat-url", "https://hc.example/ping/" + token + "\x7f"}, "--heartbeat-url: want an http"},
		{[]string{"archive", "--heartbeat-url", "https://hc.example/" + token, "--heartbeat-interval", "0s"}, "--heartbeat-interval"},
		{[]string{"backup", "--heartbeat-url", "/ping/" + token}, "--heartbeat-url: want an http"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, _, errOut := walship(t, nil, append([]string{"--repo", repo}, c.args...)...)
			if code != exitUsage || !strings.Contains(errOut, c.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, exitUsage, c.want)
			}
			if strings.Contains(errOut, token) {
				t.Errorf("the heartbeat token was printed: %q", errOut)
			}
		})
	}
}

func TestReadiness(t *testing.T) {
	for _, c := range []struct {
		s    archiver.StatsSnapshot
		ok   bool
		want string
	}{
		{archiver.StatsSnapshot{}, false, "lease"},
		{archiver.StatsSnapshot{LeaseHeld: true}, false, "not streaming"},
		{archiver.StatsSnapshot{Streaming: true}, false, "lease"},
		{archiver.StatsSnapshot{LeaseHeld: true, Streaming: true}, true, "ready"},
	} {
		if ok, why := readiness(c.s); ok != c.ok || !strings.Contains(why, c.want) {
			t.Errorf("readiness(%+v) = %v %q, want %v %q", c.s, ok, why, c.ok, c.want)
		}
	}
}

// TestMetricsLint checks the metrics' names and help against Prometheus'
// conventions, with a scheduler and a slot that cannot be read.
func TestMetricsLint(t *testing.T) {
	r := scheduler.NewRunner(nil)
	daily, _ := scheduler.ParseSchedule("@daily")
	r.Add(t.Context(), "backup", daily, func(context.Context) error { return nil })
	slot := newSlotProbe("host=127.0.0.1 port=1 connect_timeout=1", "walship", slog.New(slog.DiscardHandler))
	defer slot.close()
	col := newCollector(new(archiver.Stats), r, slot)
	problems, err := testutil.CollectAndLint(col)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(col)
	n, err := testutil.GatherAndCount(reg, "walship_slot_query_error", "walship_scheduled_next_run_timestamp_seconds")
	if err != nil || n != 2 {
		t.Errorf("slot error and next run: %d series, %v", n, err)
	}
}
