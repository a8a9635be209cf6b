package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walship/walship/archiver"
)

const (
	// slotQueryInterval is how often, at most, the metrics read the slot.
	slotQueryInterval = 15 * time.Second
	// slotQueryTimeout bounds a read, so that a scrape never hangs on it.
	slotQueryTimeout = 5 * time.Second
)

// slotQuery reads the slot's state and the WAL it holds back: from its
// restart_lsn to the server's current WAL position (a standby's received
// one).
const slotQuery = `SELECT active, wal_status, safe_wal_size,
	pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END, restart_lsn)::bigint
FROM pg_replication_slots WHERE slot_name = $1`

// slotMetrics is what the metrics show of the replication slot.
type slotMetrics struct {
	active    bool
	walStatus string
	safeSize  *int64 // nil: unlimited (max_slot_wal_keep_size = -1)
	retained  *int64 // nil: the slot holds no WAL
}

// slotProbe reads the slot over an ordinary connection, kept open between
// reads, and caches what it read for slotQueryInterval.
type slotProbe struct {
	connString, slot string
	log              *slog.Logger

	mu      sync.Mutex
	conn    *pgx.Conn
	at      time.Time
	last    slotMetrics
	err     error
	lastErr string // the error last logged, to log each once
}

func newSlotProbe(connString, slot string, log *slog.Logger) *slotProbe {
	return &slotProbe{connString: connString, slot: slot, log: log}
}

// read returns the slot's state, read at most slotQueryInterval ago.
func (p *slotProbe) read(ctx context.Context) (slotMetrics, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < slotQueryInterval {
		return p.last, p.err
	}
	p.at = time.Now()
	p.last, p.err = p.query(ctx)
	switch {
	case p.err != nil && p.err.Error() != p.lastErr:
		p.log.Warn("metrics: cannot read the replication slot; walship_slot_query_error is 1", slog.String("slot", p.slot), slog.Any(keyError, p.err))
		p.lastErr = p.err.Error()
	case p.err == nil && p.lastErr != "":
		p.log.Info("metrics: reading the replication slot again", slog.String("slot", p.slot))
		p.lastErr = ""
	}
	return p.last, p.err
}

func (p *slotProbe) query(ctx context.Context) (slotMetrics, error) {
	if p.conn == nil {
		cfg, err := pgx.ParseConfig(p.connString)
		if err != nil {
			return slotMetrics{}, fmt.Errorf("connection string: %w", archiver.Redact(err))
		}
		cfg.RuntimeParams["application_name"] = "walship_metrics"
		if p.conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
			return slotMetrics{}, fmt.Errorf("connect: %w", archiver.Redact(err))
		}
	}
	var m slotMetrics
	var status *string
	err := p.conn.QueryRow(ctx, slotQuery, p.slot).Scan(&m.active, &status, &m.safeSize, &m.retained)
	if errors.Is(err, pgx.ErrNoRows) {
		return slotMetrics{}, fmt.Errorf("no slot %q on the server", p.slot)
	}
	if err != nil {
		p.closeConn()
		return slotMetrics{}, err
	}
	if status != nil {
		m.walStatus = *status
	}
	return m, nil
}

// close closes the connection.
func (p *slotProbe) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeConn()
}

func (p *slotProbe) closeConn() {
	if p.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = p.conn.Close(ctx)
		p.conn = nil
	}
}
