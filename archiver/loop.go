package archiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/lease"
)

// loop handles one START_REPLICATION's stream. It returns the next start
// point after the server ended the timeline, or nil when the run is over.
func (s *session) loop(ctx context.Context) (*startPoint, error) {
	rctx, stopReceiving := context.WithCancel(ctx)
	defer stopReceiving()
	msgs := make(chan message, 16)
	receiverDone := make(chan struct{})
	go func() {
		defer close(receiverDone)
		receive(rctx, s.conn, msgs)
	}()
	defer func() {
		stopReceiving()
		// A receiver blocked in ReceiveMessage wakes when its context ends.
		<-receiverDone
	}()

	statusTick := time.NewTicker(s.cfg.StatusInterval)
	defer statusTick.Stop()
	syncTick := time.NewTicker(s.cfg.SyncInterval)
	defer syncTick.Stop()
	// A connection the server has not been heard on for receiveTimeout,
	// though asked to answer halfway, is dead, as walreceiver's
	// wal_receiver_timeout judges: a path that died without a reset
	// would otherwise hold the archiver until TCP gives up, for minutes.
	aliveTick := time.NewTicker(s.cfg.receiveTimeout / 8)
	defer aliveTick.Stop()
	heard, pinged := time.Now(), false

	var (
		held       []byte  // received bytes waiting for a free buffer
		heldBuf    []byte  // the message buffer that held points into
		replyAt    wal.LSN // answer the server once this is durable
		replying   bool
		draining   bool // stop: ship what was received, then end
		timelineUp bool // the server ended the timeline
		stop       = s.stop
		stopLimit  <-chan time.Time
		statusSoon <-chan time.Time // a throttled status update that is due
	)
	if s.cfg.UntilCaughtUp && s.received >= s.target {
		draining = true
	}
	for {
		if draining && held == nil && s.cur != nil && s.cur.filled > s.cur.shipped {
			s.shipPiece()
		}
		if timelineUp && held == nil && s.cur != nil && s.cur.filled > 0 {
			s.finishSegment(true)
		}
		if (draining || timelineUp) && len(s.open) == 0 {
			break
		}
		var in <-chan message
		if held == nil && !draining && !timelineUp {
			in = msgs
		} else {
			// Not reading: the server's silence is not its own.
			heard, pinged = time.Now(), false
		}
		var out chan<- *job
		var first *job
		if len(s.queue) > 0 {
			out, first = s.jobs, s.queue[0]
		}
		select {
		case <-stop:
			stop = nil
			draining = true
			stopLimit = time.After(s.cfg.StopTimeout)
			s.log.Info("stopping: storing what was received", slog.String(keyLSN, s.received.String()))
		case <-s.lost:
			return nil, fmt.Errorf("%w: another archiver may be writing this repository; stopped without storing the %d bytes received since %s", lease.ErrLost, uint64(s.received-s.durable), s.durable)
		case <-stopLimit:
			return nil, fmt.Errorf("stop: WAL from %s to %s was not stored within %s; it was not acknowledged, and the next run streams it again from the slot", s.durable, s.received, s.cfg.StopTimeout)
		case out <- first:
			s.queue = s.queue[1:]
		case r := <-s.results:
			if r.encoded {
				s.unref(r.j.buf)
				if held != nil && s.cur == nil {
					if err := s.accept(&xlogData{start: s.received, data: held}, &held); err != nil && !errors.Is(err, errBufferWait) {
						return nil, err
					}
					if held == nil {
						releaseRecvBuf(heldBuf)
						heldBuf = nil
					}
					if s.cfg.UntilCaughtUp && s.received >= s.target {
						draining = true
					}
				}
				continue
			}
			if r.err != nil {
				return nil, fmt.Errorf("store %s: %w", r.j.key, r.err)
			}
			s.finished[r.j.seq] = true
			if r.j.kind == jobPiece {
				s.pieces--
			}
			advanced := s.retire()
			if replying && s.durable >= replyAt {
				replying = false
				if err := s.status(false); err != nil {
					return nil, err
				}
			} else if advanced && (s.cfg.Synchronous || time.Since(s.lastStatus) >= statusThrottle) {
				// Telling the primary promptly lets it recycle WAL and
				// shows true lag in pg_stat_replication.
				if err := s.status(false); err != nil {
					return nil, err
				}
			} else if advanced && statusSoon == nil {
				statusSoon = time.After(statusThrottle - time.Since(s.lastStatus))
			}
			if s.cfg.Synchronous && s.pieces == 0 && !draining {
				s.shipPiece()
			}
		case m := <-in:
			heard, pinged = time.Now(), false
			switch {
			case m.err != nil:
				return nil, m.err
			case m.copyDone:
				timelineUp = true
			case m.keepalive != nil:
				s.serverEnd = max(s.serverEnd, m.keepalive.serverEnd)
				s.noteServerEnd()
				if m.keepalive.replyRequested {
					// Make the received tail durable first, so that a
					// primary shutting down never waits on walship.
					s.shipPiece()
					replyAt, replying = s.received, true
					if s.durable >= replyAt {
						replying = false
						if err := s.status(false); err != nil {
							return nil, err
						}
					}
				}
			case m.xlog != nil:
				s.serverEnd = max(s.serverEnd, m.xlog.serverEnd)
				s.noteServerEnd()
				s.noteArrival(m.xlog)
				if err := s.accept(m.xlog, &held); err != nil && !errors.Is(err, errBufferWait) {
					return nil, err
				}
				if held == nil {
					releaseRecvBuf(m.xlog.data)
				} else {
					heldBuf = m.xlog.data
				}
				if s.cfg.Synchronous && s.pieces == 0 {
					s.shipPiece()
				}
				if s.cfg.UntilCaughtUp && s.received >= s.target {
					draining = true
				}
			}
		case <-syncTick.C:
			// Pieces matter at the tip; while catching up, whole segments
			// follow each other quickly and pieces would be wasted work.
			if s.received >= s.serverEnd {
				s.shipPiece()
			}
		case <-statusTick.C:
			if err := s.status(false); err != nil {
				return nil, err
			}
		case <-aliveTick.C:
			switch silent := time.Since(heard); {
			case silent >= s.cfg.receiveTimeout:
				return nil, fmt.Errorf("nothing heard from the server for %s, though asked to answer: the connection is dead; reconnecting", silent.Round(time.Millisecond))
			case silent >= s.cfg.receiveTimeout/2 && !pinged:
				pinged = true
				if err := s.status(true); err != nil {
					return nil, err
				}
			}
		case <-statusSoon:
			statusSoon = nil
			if err := s.status(false); err != nil {
				return nil, err
			}
		}
	}
	if !timelineUp {
		if err := s.status(false); err != nil {
			return nil, err
		}
		s.log.Info("stopped", slog.String("durable", s.durable.String()), slog.Any(keyTimeline, s.tli))
		return nil, nil
	}
	return s.nextTimeline(ctx, receiverDone)
}

// nextTimeline asks the server which timeline follows the one it ended and
// where, once everything of the old one is stored.
func (s *session) nextTimeline(ctx context.Context, receiverDone <-chan struct{}) (*startPoint, error) {
	<-receiverDone // it returned after CopyDone: the connection is ours
	if err := s.status(false); err != nil {
		return nil, err
	}
	cdr, err := pglogrepl.SendStandbyCopyDone(ctx, s.conn)
	if err != nil {
		return nil, fmt.Errorf("end of timeline %d: %w", s.tli, explainServerError(err))
	}
	if cdr == nil {
		return nil, fmt.Errorf("the server ended timeline %d without naming the next one", s.tli)
	}
	next, pos := wal.TimeLineID(cdr.Timeline), wal.LSN(cdr.LSN)
	if next <= s.tli || pos > s.received {
		return nil, fmt.Errorf("%w: the server says timeline %d follows %d at %s, after the %s received", errFatal, next, s.tli, pos, s.received)
	}
	s.log.Info("timeline switch", slog.Any("from", s.tli), slog.Any("to", next), slog.String(keyLSN, pos.String()))
	return &startPoint{Segment: wal.SegmentOf(next, pos, s.segSize)}, nil
}
