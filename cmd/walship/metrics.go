package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/scheduler"
)

// metricsServer serves /metrics, /healthz and /readyz for the archiver.
type metricsServer struct {
	srv  *http.Server
	slot *slotProbe
	done chan struct{} // closed once Serve returned
}

// startMetrics listens on addr (HOST:PORT; port 0 picks one) and serves
// until stop is called. runner may be nil; slot is read through an ordinary
// connection to pg.
func startMetrics(addr string, stats *archiver.Stats, runner *scheduler.Runner, pg, slot string, log *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	m := &metricsServer{done: make(chan struct{}), slot: newSlotProbe(pg, slot, log)}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newCollector(stats, runner, m.slot),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := readiness(stats.Snapshot())
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", slog.Any(keyError, err))
		}
	}()
	log.Info("serving /metrics, /healthz and /readyz", slog.String("addr", ln.Addr().String()))
	return m, nil
}

// stop ends the server, letting a scrape in progress finish for a moment.
func (m *metricsServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done
	m.slot.close()
}

// readiness is /readyz's answer: ready while streaming and holding the
// repository's lease.
func readiness(s archiver.StatsSnapshot) (bool, string) {
	switch {
	case !s.LeaseHeld:
		return false, "not ready: the archiver lease is not held (waiting for another archiver's, or not running)"
	case !s.Streaming:
		return false, "not ready: not streaming from the primary (connecting or reconnecting)"
	}
	return true, "ready: streaming, lease held"
}

// collector turns the archiver's Stats, the scheduler's and the slot's
// state into metrics when scraped.
type collector struct {
	stats  *archiver.Stats
	runner *scheduler.Runner
	slot   *slotProbe
	descs  map[string]*prometheus.Desc
}

// metricHelp is every metric's help text, by name; the README lists them.
var metricHelp = map[string]string{
	"walship_received_lsn":     "End of the WAL received from the server, as a byte position (LSN).",
	"walship_shipped_lsn":      "Durable position (LSN): all WAL before it is in the repository.",
	"walship_acknowledged_lsn": "Flush position (LSN) last reported to the server; the slot lets it recycle WAL before it.",
	"walship_server_flush_lsn": "The server's WAL flush position (LSN), as it last reported it to walship.",
	"walship_timeline":         "Timeline being streamed, or last streamed.",
	"walship_lag_bytes":        "walship_server_flush_lsn minus walship_shipped_lsn: WAL the server has flushed that is not yet in the repository; 0 when caught up.",
	"walship_lag_seconds":      "How long the oldest WAL received but not yet in the repository has waited (to within 10 ms); 0 when everything received is stored.",

	"walship_last_received_timestamp_seconds": "Unix time WAL last arrived from the server; absent until some has.",
	"walship_last_shipped_timestamp_seconds":  "Unix time walship_shipped_lsn last advanced; absent until it has.",
	"walship_segments_shipped_total":          "Complete WAL segments (and partial segments of ended timelines) stored.",
	"walship_pieces_shipped_total":            "Pieces of filling segments stored (every --sync-interval while WAL arrives).",
	"walship_shipped_bytes_total":             "WAL bytes that became durable in the repository.",
	"walship_uploaded_bytes_total":            "Bytes written to the repository as stored (compressed, encrypted): segments, pieces, indexes, history files.",
	"walship_upload_errors_total":             "Failed upload attempts.",
	"walship_upload_retries_total":            "Failed uploads that were tried again.",
	"walship_reconnects_total":                "Replication sessions that failed and were started again.",
	"walship_streaming":                       "1 while a replication stream from the primary runs.",
	"walship_lease_held":                      "1 while this process holds the repository's archiver lease.",

	"walship_backup_running":                        "1 while a base backup is being taken.",
	"walship_backups_total":                         "Base backups taken successfully.",
	"walship_backup_failures_total":                 "Base backups that failed.",
	"walship_backup_last_success_timestamp_seconds": "Unix time the last successful base backup finished; absent until one has.",
	"walship_backup_last_duration_seconds":          "How long the last successful base backup took.",
	"walship_backup_last_size_bytes":                "Size of the last successful base backup's data as PostgreSQL sent it.",
	"walship_backup_last_stored_bytes":              "Size of the last successful base backup as stored (compressed, encrypted).",

	"walship_scheduled_next_run_timestamp_seconds": "Unix time a scheduled job (backup, prune) runs next.",
	"walship_scheduled_runs_total":                 "Runs of a scheduled job.",
	"walship_scheduled_failures_total":             "Failed runs of a scheduled job.",

	"walship_slot_retained_wal_bytes":  "WAL the server keeps for the slot: its current WAL position minus the slot's restart_lsn (pg_replication_slots, read at most every 15 s).",
	"walship_slot_safe_wal_size_bytes": "pg_replication_slots.safe_wal_size: WAL that can still be written before the slot is in danger of losing WAL; absent when unlimited.",
	"walship_slot_wal_status":          "pg_replication_slots.wal_status: 1 for the slot's current status (reserved, extended, unreserved, lost), 0 for the others.",
	"walship_slot_active":              "1 while a connection uses the slot.",
	"walship_slot_query_error":         "1 when the last read of pg_replication_slots failed (see the log), or the slot does not exist; the walship_slot_* values are then absent.",

	"walship_build_info": "walship's version, as a label; always 1.",
}

// metricLabels are the metrics with labels.
var metricLabels = map[string][]string{
	"walship_scheduled_next_run_timestamp_seconds": {"job"},
	"walship_scheduled_runs_total":                 {"job"},
	"walship_scheduled_failures_total":             {"job"},
	"walship_slot_wal_status":                      {"status"},
	"walship_build_info":                           {"version"},
}

// walStatuses are pg_replication_slots.wal_status's values.
var walStatuses = []string{"reserved", "extended", "unreserved", "lost"}

func newCollector(stats *archiver.Stats, runner *scheduler.Runner, slot *slotProbe) *collector {
	c := &collector{stats: stats, runner: runner, slot: slot, descs: map[string]*prometheus.Desc{}}
	for name, help := range metricHelp {
		c.descs[name] = prometheus.NewDesc(name, help, metricLabels[name], nil)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	emit := func(name string, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.descs[name], t, v, labels...)
	}
	gauge := func(name string, v float64, labels ...string) { emit(name, prometheus.GaugeValue, v, labels...) }
	counter := func(name string, v uint64, labels ...string) {
		emit(name, prometheus.CounterValue, float64(v), labels...)
	}
	stamp := func(name string, t time.Time) {
		if !t.IsZero() {
			gauge(name, float64(t.UnixNano())/1e9)
		}
	}

	s := c.stats.Snapshot()
	gauge("walship_build_info", 1, version)
	gauge("walship_received_lsn", float64(s.Received))
	gauge("walship_shipped_lsn", float64(s.Shipped))
	gauge("walship_acknowledged_lsn", float64(s.Acknowledged))
	gauge("walship_server_flush_lsn", float64(s.ServerFlush))
	gauge("walship_timeline", float64(s.Timeline))
	gauge("walship_lag_bytes", float64(lagBytes(s.ServerFlush, s.Shipped)))
	lag := 0.0
	if !s.OldestPending.IsZero() {
		lag = max(0, now.Sub(s.OldestPending).Seconds())
	}
	gauge("walship_lag_seconds", lag)
	stamp("walship_last_received_timestamp_seconds", s.LastReceived)
	stamp("walship_last_shipped_timestamp_seconds", s.LastShipped)
	counter("walship_segments_shipped_total", s.Segments)
	counter("walship_pieces_shipped_total", s.Pieces)
	counter("walship_shipped_bytes_total", s.ShippedBytes)
	counter("walship_uploaded_bytes_total", s.UploadedBytes)
	counter("walship_upload_errors_total", s.UploadErrors)
	counter("walship_upload_retries_total", s.UploadRetries)
	counter("walship_reconnects_total", s.Reconnects)
	gauge("walship_streaming", bool01(s.Streaming))
	gauge("walship_lease_held", bool01(s.LeaseHeld))

	gauge("walship_backup_running", bool01(s.BackupRunning))
	counter("walship_backups_total", s.Backups)
	counter("walship_backup_failures_total", s.BackupFailures)
	if b := s.LastBackup; b != nil {
		stamp("walship_backup_last_success_timestamp_seconds", b.Finished)
		gauge("walship_backup_last_duration_seconds", b.Duration.Seconds())
		gauge("walship_backup_last_size_bytes", float64(b.Size))
		gauge("walship_backup_last_stored_bytes", float64(b.StoredSize))
	}

	if c.runner != nil {
		for _, job := range c.runner.Jobs() {
			st := c.runner.Stats(job)
			if !st.Next.IsZero() {
				gauge("walship_scheduled_next_run_timestamp_seconds", float64(st.Next.UnixNano())/1e9, job)
			}
			counter("walship_scheduled_runs_total", uint64(st.Runs), job)
			counter("walship_scheduled_failures_total", uint64(st.Failures), job)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), slotQueryTimeout)
	defer cancel()
	slot, err := c.slot.read(ctx)
	if err != nil {
		gauge("walship_slot_query_error", 1)
		return
	}
	gauge("walship_slot_query_error", 0)
	gauge("walship_slot_active", bool01(slot.active))
	if slot.retained != nil {
		gauge("walship_slot_retained_wal_bytes", float64(*slot.retained))
	}
	if slot.safeSize != nil {
		gauge("walship_slot_safe_wal_size_bytes", float64(*slot.safeSize))
	}
	known := false
	for _, st := range walStatuses {
		known = known || st == slot.walStatus
		gauge("walship_slot_wal_status", bool01(st == slot.walStatus), st)
	}
	if !known && slot.walStatus != "" {
		gauge("walship_slot_wal_status", 1, slot.walStatus)
	}
}

// lagBytes is how far shipped is behind the server's flush position.
func lagBytes(serverFlush, shipped wal.LSN) uint64 {
	if serverFlush <= shipped {
		return 0
	}
	return uint64(serverFlush - shipped)
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
