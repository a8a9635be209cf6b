package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
)

// heartbeatTimeout bounds one ping.
const heartbeatTimeout = 10 * time.Second

// heartbeat pings a dead-man switch's URL (healthchecks.io, Cronitor, an
// Uptime Kuma push monitor...) with a GET while walship does its job. The
// URL may hold a token: only its scheme and host are ever logged.
type heartbeat struct {
	url      string
	target   string // scheme://host, for logs
	interval time.Duration
	client   *http.Client
	log      *slog.Logger

	mu      sync.Mutex
	last    time.Time // last ping, successful or not
	backups uint64    // backups already pinged for
}

// heartbeatFlags are archive's heartbeat flags.
func heartbeatFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "heartbeat-url", EnvVars: []string{"WALSHIP_HEARTBEAT_URL"}, Usage: "dead-man switch: GET this `URL` while WAL is shipped or caught up (at most once per --heartbeat-interval) and after each scheduled backup; failures are logged, never fatal"},
		&cli.DurationFlag{Name: "heartbeat-interval", EnvVars: []string{"WALSHIP_HEARTBEAT_INTERVAL"}, Value: time.Minute, Usage: "ping --heartbeat-url at most every `D` while archiving"},
	}
}

// newHeartbeat checks --heartbeat-url (raw; without ever printing it) and
// the interval between pings; nil when raw is empty.
func newHeartbeat(raw string, interval time.Duration, log *slog.Logger) (*heartbeat, error) {
	if raw == "" {
		return nil, nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL may hold a token: the error must not show it.
		return nil, usagef("--heartbeat-url: want an http:// or https:// URL with a host")
	}
	if interval <= 0 {
		return nil, usagef("--heartbeat-interval %s: want a positive duration", interval)
	}
	return &heartbeat{
		url:      raw,
		target:   u.Scheme + "://" + u.Host,
		interval: interval,
		client:   &http.Client{Timeout: heartbeatTimeout},
		log:      log,
	}, nil
}

// ping sends one GET; a failure is logged and reported, never fatal.
func (h *heartbeat) ping(ctx context.Context, why string) bool {
	h.mu.Lock()
	h.last = time.Now()
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), heartbeatTimeout)
	defer cancel()
	err := h.get(ctx)
	if err != nil {
		h.log.Warn("heartbeat failed; walship goes on", slog.String("heartbeat", h.target), slog.String("after", why), slog.Any(keyError, err))
		return false
	}
	h.log.Debug("heartbeat sent", slog.String("heartbeat", h.target), slog.String("after", why))
	return true
}

// get sends the request. Its errors never hold the URL.
func (h *heartbeat) get(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return errors.New("cannot make the request")
	}
	req.Header.Set("User-Agent", "walship/"+version)
	resp, err := h.client.Do(req)
	if err != nil {
		// A *url.Error names the URL; what it wraps does not.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP status %s", resp.Status)
	}
	return nil
}

// watch pings while the archiver makes progress until ctx is done: once per
// interval at most when WAL became durable since the last ping, or while it
// streams with nothing waiting (an idle database), and at once after each
// successful backup.
func (h *heartbeat) watch(ctx context.Context, stats *archiver.Stats) {
	tick := time.NewTicker(min(time.Second, h.interval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s := stats.Snapshot()
		h.mu.Lock()
		last, newBackup := h.last, s.Backups > h.backups
		h.backups = s.Backups
		h.mu.Unlock()
		switch {
		case newBackup:
			h.ping(ctx, "backup")
		case time.Since(last) < h.interval:
		case s.LastShipped.After(last):
			h.ping(ctx, "wal shipped")
		case s.Streaming && s.LeaseHeld && s.OldestPending.IsZero():
			h.ping(ctx, "caught up")
		}
	}
}

// final pings once an archiver run ended well, if WAL became durable since
// the last ping or the run was a bounded one (--until-caught-up).
func (h *heartbeat) final(ctx context.Context, stats *archiver.Stats, bounded bool) {
	h.mu.Lock()
	last := h.last
	h.mu.Unlock()
	if bounded || stats.Snapshot().LastShipped.After(last) {
		h.ping(ctx, "run ended")
	}
}
