package archiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/lease"
)

// Attribute keys of log records.
const (
	keyKey      = "key"
	keyError    = "error"
	keyLSN      = "lsn"
	keyTimeline = "timeline"
	keySlot     = "slot"
	keySegment  = "segment"
)

// Config configures an archiver run.
type Config struct {
	// ConnString reaches the primary: a libpq keyword/value string or URL.
	ConnString string
	// Slot is the physical replication slot, created if absent.
	Slot string
	// AppName is the application_name the primary sees. It must not match
	// synchronous_standby_names unless Synchronous is set.
	AppName string
	// SyncInterval is how often the bytes of a filling segment are shipped
	// as a piece, bounding what a crash of the primary can lose.
	SyncInterval time.Duration
	// StatusInterval is how often a status update goes to the primary.
	StatusInterval time.Duration
	// Synchronous ships and acknowledges as soon as WAL arrives.
	Synchronous bool
	// UntilCaughtUp stops once everything the primary had flushed when the
	// run started is in the repository.
	UntilCaughtUp bool
	// MemoryLimit sizes the WAL held in memory: raw segment buffers (the
	// filling one and those waiting to be encoded) take at most half of it,
	// at least one segment; the encoded segments in flight, one per
	// uploader, are meant to fit the other half.
	MemoryLimit int64
	// Uploaders is how many objects upload at once.
	Uploaders int
	// StopTimeout bounds how long a stop waits for received WAL to be
	// stored and acknowledged.
	StopTimeout time.Duration
	// LeaseTTL is how long the repository lease lasts without renewal: a
	// killed archiver's lease can be taken over that long (plus a clock
	// skew margin) after its last renewal.
	LeaseTTL time.Duration
	// WaitForLease waits for another archiver's lease to end instead of
	// failing with a *lease.HeldError.
	WaitForLease bool
	// StartBefore, when set, is a position the WAL must be archived from
	// when the repository holds none of the timeline yet: a base backup's
	// start, which PostgreSQL 14 cannot learn from the slot (it lacks
	// READ_REPLICATION_SLOT) and would otherwise start past.
	StartBefore wal.LSN
	// AcceptGap lets a run whose next WAL the primary has already removed
	// go on from where the primary's WAL begins now, leaving a gap in the
	// repository (logged as an error) instead of stopping.
	AcceptGap bool
	// Log receives progress and problems; nil discards.
	Log *slog.Logger
	// Stats, if set, receives the run's positions, counts and states as
	// they change, for monitoring.
	Stats *Stats

	retryBase time.Duration // first upload retry's wait; tests shorten it
	// receiveTimeout is how long a replication connection may stay silent
	// (asked to answer halfway) before it counts as dead; tests shorten it.
	receiveTimeout time.Duration
}

// Defaults for Config's zero fields.
const (
	DefaultSlot           = "walship"
	DefaultAppName        = "walship"
	DefaultSyncInterval   = time.Second
	DefaultStatusInterval = 10 * time.Second
	DefaultMemoryLimit    = 32 << 20
	DefaultUploaders      = 2
	DefaultStopTimeout    = time.Minute
	// DefaultReceiveTimeout is PostgreSQL's wal_receiver_timeout default.
	DefaultReceiveTimeout = time.Minute
)

func (c *Config) setDefaults() error {
	if c.Slot == "" {
		c.Slot = DefaultSlot
	}
	if err := ValidSlotName(c.Slot); err != nil {
		return err
	}
	if c.AppName == "" {
		c.AppName = DefaultAppName
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.SyncInterval < 10*time.Millisecond {
		return fmt.Errorf("sync interval %s: use at least 10ms", c.SyncInterval)
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.MemoryLimit == 0 {
		c.MemoryLimit = DefaultMemoryLimit
	}
	if c.Uploaders <= 0 {
		c.Uploaders = DefaultUploaders
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = lease.DefaultTTL
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Stats == nil {
		c.Stats = new(Stats)
	}
	if c.retryBase == 0 {
		c.retryBase = 200 * time.Millisecond
	}
	if c.receiveTimeout == 0 {
		c.receiveTimeout = DefaultReceiveTimeout
	}
	return nil
}

// Result sums up a run.
type Result struct {
	Timeline wal.TimeLineID
	Durable  wal.LSN // everything before it is in the repository and acknowledged
	Segments int     // complete segments stored
	Pieces   int     // pieces stored
}

// Run streams WAL from the primary into repo until ctx is done (a clean
// stop: what was received is stored and acknowledged, and Run returns nil),
// until caught up when cfg.UntilCaughtUp is set, or until an error that
// reconnecting cannot fix. Dropped connections are retried with backoff.
func Run(ctx context.Context, repo *catalog.Repo, cfg Config) (Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return Result{}, err
	}
	// At most one archiver writes a repository.
	held, release, err := holdLease(ctx, repo, lease.Options{
		TTL:       cfg.LeaseTTL,
		ClockSkew: min(lease.DefaultClockSkew, cfg.LeaseTTL/3),
		Wait:      cfg.WaitForLease,
		Log:       cfg.Log,
	})
	if err != nil {
		return Result{}, err
	}
	defer release()
	cfg.Stats.leaseHeld.Store(true)
	defer cfg.Stats.leaseHeld.Store(false)

	var total Result
	backoff := time.Second
	failures := 0
	fromSlot := false // set once a gap was accepted
	for {
		s := &session{cfg: cfg, repo: repo, log: cfg.Log, stop: ctx.Done(), lost: held.Lost(), fromSlot: fromSlot}
		res, err := s.run(context.WithoutCancel(ctx))
		total.Timeline, total.Segments, total.Pieces = res.Timeline, total.Segments+res.Segments, total.Pieces+res.Pieces
		total.Durable = max(total.Durable, res.Durable)
		if err == nil {
			return total, nil
		}
		if ctx.Err() != nil {
			// Stopped: what was streamed is stored; a set-up cut short is
			// no failure.
			cfg.Log.Warn("stopped; the last session ended with an error", slog.Any(keyError, err))
			return total, nil
		}
		if errors.Is(err, errWALRemoved) && cfg.AcceptGap && !fromSlot {
			cfg.Log.Error("accepting a gap in the archive: streaming again from the slot's position; backups taken before it cannot be recovered past it",
				slog.Any(keyError, err))
			fromSlot = true
			continue
		}
		var ce *ConfigError
		if errors.As(err, &ce) || errors.Is(err, errConflict) || errors.Is(err, errFatal) || errors.Is(err, lease.ErrLost) {
			return total, err
		}
		if res.Durable > 0 {
			// Progress was made: the next failure is new, and waits
			// the first retry's second, not what earlier ones built up.
			failures, backoff = 0, time.Second
		}
		if failures++; cfg.UntilCaughtUp && failures > boundedRetries {
			// A bounded run has a scheduler that runs it again; failing
			// now says what is wrong sooner than retrying forever.
			return total, err
		}
		cfg.Log.Warn("replication interrupted; reconnecting", slog.Any(keyError, err), slog.Duration("in", backoff))
		cfg.Stats.reconnects.Add(1)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return total, nil
		}
		switch {
		case failures == 1:
			backoff = time.Second
		case errors.Is(err, errSlotActive):
			// The server frees the slot as soon as it notices the old
			// connection is gone; poll, as pg_receivewal does.
			backoff = 2 * time.Second
		default:
			backoff = min(backoff*2, time.Minute)
		}
	}
}

// boundedRetries is how often an UntilCaughtUp run reconnects after
// failures without progress before it gives up.
const boundedRetries = 2

// errFatal marks session errors that reconnecting cannot fix.
var errFatal = errors.New("fatal")

// holdLease acquires a lease and keeps renewing it until release is called,
// which also gives it up.
func holdLease(ctx context.Context, repo *catalog.Repo, opts lease.Options) (*lease.Lease, func(), error) {
	held, err := lease.Acquire(ctx, repo.Store(), opts)
	if err != nil {
		return nil, nil, err
	}
	keepCtx, stopKeeping := context.WithCancel(context.WithoutCancel(ctx))
	kept := make(chan error, 1)
	go func() { kept <- held.Keep(keepCtx) }()
	release := func() {
		stopKeeping()
		<-kept
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := held.Release(rctx); err != nil && opts.Log != nil {
			opts.Log.Warn("release the lease (the next run waits for it to expire)", slog.Any(keyError, err))
		}
	}
	return held, release, nil
}
