package archiver

import (
	"sync/atomic"
	"time"

	"github.com/walship/walship/internal/wal"
)

// Stats is what an archiver run and base backups report for monitoring. The
// archiver and Backup update it as things happen; Snapshot may be called
// from any goroutine meanwhile. The zero value is ready to use. Give the same
// Stats to Config and BackupConfig to see both in one place.
type Stats struct {
	received, durable, acked, serverFlush atomic.Uint64 // LSNs
	timeline                              atomic.Uint32
	// Unix nanoseconds; 0: never, or (pendingSince) nothing pending.
	lastReceived, lastDurable, pendingSince atomic.Int64

	segments, pieces, walBytes, uploadedBytes atomic.Uint64
	uploadErrors, uploadRetries, reconnects   atomic.Uint64
	streaming, leaseHeld                      atomic.Bool

	backupRunning           atomic.Bool
	backups, backupFailures atomic.Uint64
	lastBackup              atomic.Pointer[BackupStats]
}

// StatsSnapshot is Stats read at one moment (each value atomically, not all
// of them at once).
type StatsSnapshot struct {
	// Received is the end of the WAL received from the server.
	Received wal.LSN
	// Shipped is the durable position: all WAL before it is in the
	// repository.
	Shipped wal.LSN
	// Acknowledged is the flush position last reported to the server,
	// which lets it recycle the WAL before it.
	Acknowledged wal.LSN
	// ServerFlush is the server's flush position, as it last reported it.
	ServerFlush wal.LSN
	// Timeline is the timeline being streamed or last streamed.
	Timeline wal.TimeLineID
	// LastReceived is when WAL last arrived; zero if none has.
	LastReceived time.Time
	// LastShipped is when Shipped last advanced; zero if it has not.
	LastShipped time.Time
	// OldestPending is when the oldest WAL that is received but not yet in
	// the repository arrived; zero when there is none.
	OldestPending time.Time
	// Segments counts the complete segments (and the partial segments of
	// ended timelines) stored; Pieces the pieces of filling segments.
	Segments, Pieces uint64
	// ShippedBytes counts the WAL bytes that became durable.
	ShippedBytes uint64
	// UploadedBytes counts the bytes written to the repository, as stored
	// (compressed, encrypted): WAL, pieces, indexes and history files.
	UploadedBytes uint64
	// UploadErrors counts failed upload attempts; UploadRetries those that
	// were tried again.
	UploadErrors, UploadRetries uint64
	// Reconnects counts replication sessions started again after a failure.
	Reconnects uint64
	// Streaming is whether a replication stream is running.
	Streaming bool
	// LeaseHeld is whether this process holds the repository's archiver
	// lease.
	LeaseHeld bool
	// BackupRunning is whether a base backup is being taken.
	BackupRunning bool
	// Backups and BackupFailures count finished and failed base backups.
	Backups, BackupFailures uint64
	// LastBackup describes the last successful base backup; nil if none.
	LastBackup *BackupStats
}

// BackupStats describes a successful base backup.
type BackupStats struct {
	// ID is the backup's id.
	ID string
	// Finished is when its backup.json was written.
	Finished time.Time
	// Duration is how long it took, from start to backup.json.
	Duration time.Duration
	// Size is the data's size as PostgreSQL sent it; StoredSize as stored.
	Size, StoredSize int64
}

// Snapshot reads s.
func (s *Stats) Snapshot() StatsSnapshot {
	return StatsSnapshot{
		Received:       wal.LSN(s.received.Load()),
		Shipped:        wal.LSN(s.durable.Load()),
		Acknowledged:   wal.LSN(s.acked.Load()),
		ServerFlush:    wal.LSN(s.serverFlush.Load()),
		Timeline:       wal.TimeLineID(s.timeline.Load()),
		LastReceived:   unixTime(s.lastReceived.Load()),
		LastShipped:    unixTime(s.lastDurable.Load()),
		OldestPending:  unixTime(s.pendingSince.Load()),
		Segments:       s.segments.Load(),
		Pieces:         s.pieces.Load(),
		ShippedBytes:   s.walBytes.Load(),
		UploadedBytes:  s.uploadedBytes.Load(),
		UploadErrors:   s.uploadErrors.Load(),
		UploadRetries:  s.uploadRetries.Load(),
		Reconnects:     s.reconnects.Load(),
		Streaming:      s.streaming.Load(),
		LeaseHeld:      s.leaseHeld.Load(),
		BackupRunning:  s.backupRunning.Load(),
		Backups:        s.backups.Load(),
		BackupFailures: s.backupFailures.Load(),
		LastBackup:     s.lastBackup.Load(),
	}
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// backupDone records a base backup's outcome.
func (s *Stats) backupDone(b BackupStats, err error) {
	s.backupRunning.Store(false)
	if err != nil {
		s.backupFailures.Add(1)
		return
	}
	s.lastBackup.Store(&b)
	s.backups.Add(1)
}

// arrivals remembers when WAL that is received but not yet durable arrived,
// to within arrivalGrain: a mark covers the WAL that arrived in a window of
// that length and carries the window's start.
type arrivals struct {
	marks []arrival // ascending
}

type arrival struct {
	end wal.LSN // the mark covers the WAL up to end
	at  int64   // Unix nanoseconds the first of it arrived
}

const (
	arrivalGrain = 10 * time.Millisecond
	// maxArrivals bounds the marks; past it the newest mark grows, which
	// makes the newest WAL look older than it is, never the oldest.
	maxArrivals = 4096
)

// add notes that the WAL up to end arrived at now; durable is the durable
// position, before which nothing is pending.
func (a *arrivals) add(end, durable wal.LSN, now int64) {
	if end <= durable {
		return
	}
	if n := len(a.marks); n > 0 && (now-a.marks[n-1].at < int64(arrivalGrain) || n >= maxArrivals) {
		a.marks[n-1].end = end
		return
	}
	a.marks = append(a.marks, arrival{end: end, at: now})
}

// drop forgets the WAL before durable.
func (a *arrivals) drop(durable wal.LSN) {
	i := 0
	for i < len(a.marks) && a.marks[i].end <= durable {
		i++
	}
	a.marks = a.marks[i:]
}

// oldest is when the oldest pending WAL arrived, 0 when none is pending.
func (a *arrivals) oldest() int64 {
	if len(a.marks) == 0 {
		return 0
	}
	return a.marks[0].at
}
