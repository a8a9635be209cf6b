package archiver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/internal/walrec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

// session is one replication connection's worth of streaming.
type session struct {
	cfg  Config
	repo *catalog.Repo
	log  *slog.Logger
	stop <-chan struct{} // closed: stop cleanly
	lost <-chan struct{} // closed: the lease is gone, stop writing at once
	// fromSlot starts at the slot's position, not after the repository's
	// WAL: the gap between them was accepted.
	fromSlot bool

	conn    *pgconn.PgConn
	srv     Server
	segSize uint64
	tli     wal.TimeLineID

	cur       *segment // nil while waiting for a free buffer
	received  wal.LSN  // end of the WAL received, in order
	durable   wal.LSN  // everything before it is in the repository
	serverEnd wal.LSN  // the server's flush position, as last reported
	target    wal.LSN  // UntilCaughtUp: stop once received reaches it

	ship      *shipper
	jobs      chan *job
	results   chan result
	queue     []*job          // not yet taken by a worker
	open      map[uint64]*job // not yet retired, by seq
	finished  map[uint64]bool
	nextSeq   uint64 // seq of the next job created
	retireSeq uint64 // seq of the next job to retire
	pieces    int    // pieces not yet finished (synchronous batching)
	cleanup   sync.WaitGroup

	lastStatus time.Time

	// arr times the WAL received but not yet durable, for Stats.
	arr arrivals

	// rec reads the WAL as it arrives for the segments' indexes; nil once
	// it failed (the WAL is still archived, only not indexed).
	rec *walrec.Reader

	// stalePieces are pieces a run that died left of segments after the
	// start, deleted with their superseding segment.
	stalePieces map[uint64][]string

	free    [][]byte // segment buffers not in use
	maxBufs int
	nBufs   int

	res Result
}

// segment is the segment being filled.
type segment struct {
	seg       wal.Segment
	buf       []byte
	ref       *segBuf // buf's reference count
	filled    uint32  // bytes received
	shipped   uint32  // end of what pieces hold or will hold
	verify    uint32  // bytes [0, verify) are already stored and must match
	verifySum [32]byte
	pieceKeys []string
}

func (s *session) run(ctx context.Context) (Result, error) {
	// A stop during set-up abandons it; once streaming, a stop drains.
	setup, cancel := context.WithCancel(ctx)
	defer cancel()
	setupDone := make(chan struct{})
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-setupDone:
		}
	}()
	defer s.idle()
	conn, err := connect(setup, s.cfg.ConnString, s.cfg.AppName)
	if err != nil {
		return s.res, err
	}
	s.conn = conn
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()

	if err := s.ask(setup, func(ctx context.Context) (err error) {
		s.srv, err = identify(ctx, conn)
		return err
	}); err != nil {
		return s.res, err
	}
	s.segSize = s.srv.SegmentSize
	s.cfg.Stats.serverFlush.Store(uint64(s.srv.FlushLSN))
	if _, err := s.repo.Init(setup, catalog.Meta{SystemID: s.srv.SystemID, SegmentSize: s.segSize}); err != nil {
		if errors.Is(err, catalog.ErrUnusable) {
			return s.res, fmt.Errorf("%w: %w", errFatal, err)
		}
		return s.res, err // the store failed: the next session tries again
	}
	var created bool
	if err := s.ask(setup, func(ctx context.Context) (err error) {
		created, err = ensureSlot(ctx, conn, s.cfg.Slot)
		return err
	}); err != nil {
		return s.res, err
	}
	if created {
		s.log.Info("created replication slot", slog.String(keySlot, s.cfg.Slot))
	}
	s.ship = &shipper{repo: s.repo, log: s.log, backoff: s.cfg.retryBase, stats: s.cfg.Stats}
	sp, err := s.startPoint(setup)
	if err != nil {
		return s.res, err
	}
	s.repairIndexes(setup, sp.Segment)
	s.target = s.srv.FlushLSN
	// Half the budget for raw segments, half for encoded ones in flight.
	s.maxBufs = max(1, int(s.cfg.MemoryLimit/(2*int64(s.segSize))))
	s.jobs = make(chan *job)
	s.results = make(chan result, s.cfg.Uploaders)
	s.open = map[uint64]*job{}
	s.finished = map[uint64]bool{}

	work, stopWork := context.WithCancel(ctx)
	var workers sync.WaitGroup
	for range s.cfg.Uploaders {
		workers.Go(func() {
			send := func(r result) bool {
				select {
				case s.results <- r:
					return true
				case <-work.Done():
					return false
				}
			}
			for j := range s.jobs {
				// Encoding first frees the segment buffer long before
				// the upload ends.
				e, err := s.ship.encode(j)
				if j.buf != nil && !send(result{j: j, encoded: true}) {
					return
				}
				if err == nil {
					err = s.ship.store(work, e, j.kind == jobIndex)
					e.Release()
				}
				if !send(result{j: j, err: err}) {
					return
				}
			}
		})
	}
	defer func() {
		close(s.jobs)
		stopWork()
		workers.Wait()
		s.cleanup.Wait()
	}()
	close(setupDone)
	if setup.Err() != nil {
		return s.res, nil // stopped before streaming
	}
	return s.res, s.stream(ctx, sp)
}

// startPoint decides where streaming starts: after what the repository holds
// of the newest timeline it has WAL of, else at the slot's restart position.
func (s *session) startPoint(ctx context.Context) (startPoint, error) {
	var slot slotState
	var slotKnown bool
	if err := s.ask(ctx, func(ctx context.Context) (err error) {
		slot, slotKnown, err = readSlot(ctx, s.conn, s.cfg.Slot, s.srv.VersionNum)
		return err
	}); err != nil {
		return startPoint{}, err
	}
	acked := unknownLSN
	if slotKnown && slot.RestartLSN != 0 {
		acked = slot.RestartLSN
	}
	for t := s.srv.TLI; t >= 1 && !s.fromSlot; t-- {
		sp, ok, err := resumePoint(ctx, s.repo, t, s.segSize, acked)
		if err != nil {
			return startPoint{}, err
		}
		if ok {
			return sp, nil
		}
	}
	lsn, tli := s.srv.FlushLSN, s.srv.TLI
	if slotKnown && slot.RestartLSN != 0 {
		lsn = slot.RestartLSN
		if slot.RestartTLI != 0 {
			tli = slot.RestartTLI
		}
	}
	if b := s.cfg.StartBefore; b != 0 && b < lsn && !s.fromSlot && tli == s.srv.TLI {
		lsn = b
	}
	s.log.Info("starting at the slot's position", slog.String(keyLSN, lsn.String()), slog.Any(keyTimeline, tli), slog.Bool("repository_empty", !s.fromSlot))
	sp := startPoint{Segment: wal.SegmentOf(tli, lsn, s.segSize)}
	if s.fromSlot {
		// Record the accepted gap where the WAL resumes, so that later runs
		// resume after it and restore and verify know the WAL before it is
		// lost rather than missing.
		marker := fmt.Appendf(nil, "{\"accepted\": %q, \"resumes_at\": %q, \"reason\": \"the primary removed WAL before it was archived\"}\n",
			time.Now().UTC().Format(time.RFC3339), sp.Segment.Start(s.segSize))
		if err := s.ship.storeBytes(ctx, catalog.GapKey(sp.Segment, s.segSize), marker); err != nil {
			return startPoint{}, fmt.Errorf("record the accepted gap: %w", err)
		}
	}
	return sp, nil
}

// stream runs START_REPLICATION from sp and follows timeline switches.
func (s *session) stream(ctx context.Context, sp startPoint) error {
	for {
		if err := s.storeHistory(ctx, sp.Segment.TLI); err != nil {
			return err
		}
		start := sp.Segment.Start(s.segSize)
		s.tli = sp.Segment.TLI
		s.res.Timeline = s.tli
		err := s.ask(ctx, func(ctx context.Context) error {
			return pglogrepl.StartReplication(ctx, s.conn, s.cfg.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{
				Timeline: int32(s.tli),
				Mode:     pglogrepl.PhysicalReplication,
			})
		})
		if next, pos, ok := pglogrepl.IsErrEndTimeline(err); ok {
			// The start is exactly where timeline s.tli ended.
			sp = startPoint{Segment: wal.SegmentOf(wal.TimeLineID(next), wal.LSN(pos), s.segSize)}
			continue
		}
		if err != nil {
			return fmt.Errorf("START_REPLICATION at %s on timeline %d: %w", start, s.tli, explainServerError(err))
		}
		s.log.Info("streaming", slog.String(keyLSN, start.String()), slog.Any(keyTimeline, s.tli), slog.String(keySlot, s.cfg.Slot))
		s.received = start
		s.rec = s.primedReader(ctx, sp.Segment)
		s.durable = max(s.durable, start+wal.LSN(sp.Stored))
		s.arr = arrivals{}
		st := s.cfg.Stats
		st.timeline.Store(uint32(s.tli))
		st.received.Store(uint64(s.received))
		st.durable.Store(uint64(s.durable))
		st.pendingSince.Store(0)
		st.streaming.Store(true)
		if s.cur != nil { // an empty segment left at a timeline switch
			s.unref(s.cur.ref)
			s.cur = nil
		}
		if !s.newSegment(sp.Segment) {
			return fmt.Errorf("no buffer for the first segment") // cannot happen: none in use
		}
		s.cur.shipped, s.cur.verify, s.cur.verifySum = sp.Stored, sp.Stored, sp.StoredSum
		if sp.Unchecked {
			s.cur.verify = 0
			s.log.Info("resuming after the stored pieces without checking them: the archiver holds no age identity to read them", slog.String(keySegment, sp.Segment.Name(s.segSize)))
		}
		s.cur.pieceKeys = sp.PieceKeys
		s.stalePieces = sp.LaterPieces

		next, err := s.loop(ctx)
		if err != nil || next == nil {
			return err
		}
		sp = *next
	}
}

// ask runs f, one exchange with the server, within the receive timeout, so
// that a server or a path to it that stops answering while a session sets
// up fails the session, to be tried again, instead of hanging it.
func (s *session) ask(ctx context.Context, f func(context.Context) error) error {
	actx, cancel := context.WithTimeout(ctx, s.cfg.receiveTimeout)
	defer cancel()
	err := f(actx)
	if err != nil && ctx.Err() == nil && actx.Err() != nil {
		return fmt.Errorf("%w (the server did not answer within %s)", err, s.cfg.receiveTimeout)
	}
	return err
}

// storeHistory stores tli's history file before any of its WAL.
func (s *session) storeHistory(ctx context.Context, tli wal.TimeLineID) error {
	if tli == 1 {
		return nil
	}
	var h pglogrepl.TimelineHistoryResult
	err := s.ask(ctx, func(ctx context.Context) (err error) {
		h, err = pglogrepl.TimelineHistory(ctx, s.conn, int32(tli))
		return err
	})
	if err != nil {
		return fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, explainServerError(err))
	}
	if _, err := wal.ParseHistory(h.Content); err != nil {
		return fmt.Errorf("history of timeline %d from the server: %w", tli, err)
	}
	return s.ship.storeBytes(ctx, catalog.HistoryKey(tli), h.Content)
}

// segBuf counts what reads a segment buffer: the segment while it fills and
// each job made of it until the job is encoded.
type segBuf struct {
	b    []byte
	refs int
}

// newSegment starts filling seg; false when every buffer is in use.
func (s *session) newSegment(seg wal.Segment) bool {
	var buf []byte
	switch {
	case len(s.free) > 0:
		buf = s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
	case s.nBufs < s.maxBufs:
		buf = make([]byte, s.segSize)
		s.nBufs++
	default:
		return false
	}
	s.cur = &segment{seg: seg, buf: buf, ref: &segBuf{b: buf, refs: 1}}
	if keys, ok := s.stalePieces[seg.No]; ok {
		s.cur.pieceKeys = keys
		delete(s.stalePieces, seg.No)
	}
	return true
}

// unref drops a reference to b, which is free for the next segment once
// nothing reads it.
func (s *session) unref(b *segBuf) {
	b.refs--
	if b.refs == 0 {
		s.free = append(s.free, b.b)
	}
}

// enqueue creates a job; workers take jobs in creation order.
func (s *session) enqueue(j *job) {
	j.seq = s.nextSeq
	s.nextSeq++
	s.open[j.seq] = j
	s.queue = append(s.queue, j)
	if j.kind == jobPiece {
		s.pieces++
	}
}

// shipPiece queues the bytes of the filling segment not yet shipped.
func (s *session) shipPiece() {
	c := s.cur
	if c == nil || c.filled <= c.shipped {
		return
	}
	key := catalog.PieceKey(c.seg, s.segSize, c.shipped, c.filled)
	c.pieceKeys = append(c.pieceKeys, key)
	c.ref.refs++
	s.enqueue(&job{kind: jobPiece, key: key, data: c.buf[c.shipped:c.filled], buf: c.ref, end: c.seg.Start(s.segSize) + wal.LSN(c.filled)})
	c.shipped = c.filled
}

// finishSegment queues the filled segment, whole or (at a timeline's end)
// as a partial.
func (s *session) finishSegment(partial bool) {
	c := s.cur
	s.cur = nil
	// The job takes over the filling segment's reference.
	j := &job{kind: jobSegment, key: catalog.SegmentKey(c.seg, s.segSize), data: c.buf, buf: c.ref,
		end: c.seg.Start(s.segSize) + wal.LSN(c.filled), pieceKeys: c.pieceKeys}
	if partial {
		j.kind, j.key, j.data = jobPartial, catalog.PartialKey(c.seg, s.segSize), c.buf[:c.filled]
		if c.verify > c.filled {
			// Pieces stored earlier run past the timeline's end: WAL that
			// a primary wrote after its standby was promoted. Keep it as
			// evidence rather than delete it with the superseded pieces.
			s.log.Warn("the repository holds WAL past the end of this timeline, from a primary that went on after a failover; keeping it",
				slog.String(keySegment, c.seg.Name(s.segSize)), slog.Int("server_bytes", int(c.filled)), slog.Int("stored_bytes", int(c.verify)))
			j.pieceKeys = nil
		}
	}
	s.enqueue(j)
	if s.rec != nil {
		// The records that ended in this segment: a restore reads them
		// to find where a time, xid or name target stops.
		s.enqueue(&job{kind: jobIndex, key: catalog.IndexKey(c.seg, s.segSize), data: catalog.EncodeIndex(s.rec.Events(), s.rec.Carry()), end: j.end})
	}
}

// primedReader is the index reader for WAL streamed from seg's start, made
// from the carry in the index of the segment before or, when that index has
// none, fed that segment, if stored: a record that began there and ends in
// seg is then read whole instead of skipped.
func (s *session) primedReader(ctx context.Context, seg wal.Segment) *walrec.Reader {
	start := seg.Start(s.segSize)
	if seg.No == 0 {
		return walrec.NewReader(start, s.segSize)
	}
	prev := wal.Segment{TLI: seg.TLI, No: seg.No - 1}
	// An index of format 1 has no carry; it is not rewritten with one,
	// since objects are written once.
	_, carry, err := s.repo.ReadIndex(ctx, prev, s.segSize)
	if err == nil {
		r, err := walrec.NewReaderFrom(start, s.segSize, carry)
		if err == nil {
			s.log.Debug("index: starting from the carry of the segment before", slog.String(keySegment, prev.Name(s.segSize)), slog.String("carry", carry.String()))
			return r
		}
		if carry.Known() {
			s.log.Warn("index: the carry of the segment before does not fit; reading that segment", slog.String(keySegment, prev.Name(s.segSize)), slog.Any(keyError, err))
		}
	}
	rc, err := s.repo.Open(ctx, catalog.SegmentKey(prev, s.segSize))
	if err != nil {
		return walrec.NewReader(start, s.segSize)
	}
	defer rc.Close()
	r := walrec.NewReader(prev.Start(s.segSize), s.segSize)
	if _, err := io.Copy(r, rc); err != nil || r.Pos() != start {
		s.log.Debug("index: starting without the segment before", slog.String(keySegment, prev.Name(s.segSize)), slog.Any(keyError, err))
		return walrec.NewReader(start, s.segSize)
	}
	r.Events() // indexed by the run that stored it
	return r
}

// repairIndexes writes the indexes of the few segments before the start
// that a run which died stored without their index (uploads run in
// parallel). A failure is only logged.
func (s *session) repairIndexes(ctx context.Context, start wal.Segment) {
	for k := uint64(2); k >= 1; k-- {
		if start.No < k {
			continue
		}
		seg := wal.Segment{TLI: start.TLI, No: start.No - k}
		key := catalog.IndexKey(seg, s.segSize)
		if _, err := s.repo.Store().Stat(ctx, key); !errors.Is(err, storage.ErrNotExist) {
			continue
		}
		rc, err := s.repo.Open(ctx, catalog.SegmentKey(seg, s.segSize))
		if err != nil {
			continue // not stored: nothing to index
		}
		r := s.primedReader(ctx, seg)
		_, err = io.Copy(r, rc)
		rc.Close()
		if err == nil {
			var e *catalog.Encoded
			if e, err = s.repo.Encode(key, bytes.NewReader(catalog.EncodeIndex(r.Events(), r.Carry()))); err == nil {
				err = s.ship.store(ctx, e, true)
				e.Release()
			}
		}
		if err != nil {
			s.log.Warn("could not write a missing segment index", slog.String(keyKey, key), slog.Any(keyError, err))
		} else {
			s.log.Info("wrote a segment index a run that died left out", slog.String(keyKey, key))
		}
	}
}

// index feeds received WAL to the index reader. A failure only ends the
// indexing, never the archiving.
func (s *session) index(p []byte) {
	if s.rec == nil {
		return
	}
	if _, err := s.rec.Write(p); err != nil {
		s.log.Warn("cannot index this WAL (commit times for --to-time); archiving goes on", slog.Any(keyError, err))
		s.rec = nil
	}
}

// retire advances the durable position over the run of finished jobs.
func (s *session) retire() bool {
	advanced := false
	for s.finished[s.retireSeq] {
		j := s.open[s.retireSeq]
		delete(s.finished, s.retireSeq)
		delete(s.open, s.retireSeq)
		s.retireSeq++
		if j.end > s.durable {
			s.cfg.Stats.walBytes.Add(uint64(j.end - s.durable))
			s.durable = j.end
			advanced = true
		}
		switch j.kind {
		case jobPiece:
			s.res.Pieces++
			s.cfg.Stats.pieces.Add(1)
		case jobSegment, jobPartial:
			s.res.Segments++
			s.cfg.Stats.segments.Add(1)
			s.log.Debug("stored segment", slog.String(keyKey, j.key))
			if len(j.pieceKeys) > 0 {
				keys := j.pieceKeys
				s.cleanup.Go(func() { s.ship.deletePieces(context.Background(), keys) })
			}
		}
	}
	s.res.Durable = s.durable
	if advanced {
		st := s.cfg.Stats
		st.durable.Store(uint64(s.durable))
		st.lastDurable.Store(time.Now().UnixNano())
		s.arr.drop(s.durable)
		st.pendingSince.Store(s.arr.oldest())
	}
	return advanced
}

// idle records in Stats that the session streams no more: nothing it
// received is pending any longer (the next session streams it again).
func (s *session) idle() {
	s.cfg.Stats.streaming.Store(false)
	s.cfg.Stats.pendingSince.Store(0)
}

// noteArrival records in Stats that x arrived from the server.
func (s *session) noteArrival(x *xlogData) {
	if len(x.data) == 0 {
		return
	}
	now := time.Now().UnixNano()
	s.arr.add(x.start+wal.LSN(len(x.data)), s.durable, now)
	st := s.cfg.Stats
	st.lastReceived.Store(now)
	if st.pendingSince.Load() == 0 {
		st.pendingSince.Store(s.arr.oldest())
	}
}

// noteServerEnd records the server's flush position as it reported it.
func (s *session) noteServerEnd() {
	s.cfg.Stats.serverFlush.Store(uint64(max(s.serverEnd, s.srv.FlushLSN)))
}

// statusThrottle spaces the status updates sent because WAL became durable.
const statusThrottle = 250 * time.Millisecond

func (s *session) status(reply bool) error {
	if err := sendStatus(s.conn, s.received, s.durable, reply); err != nil {
		return fmt.Errorf("send status: %w", err)
	}
	s.lastStatus = time.Now()
	s.cfg.Stats.acked.Store(uint64(s.durable))
	return nil
}

// verifyPrefix checks re-streamed bytes against the pieces stored before.
func (s *session) verifyPrefix() error {
	c := s.cur
	if c.verify == 0 || c.filled < c.verify {
		return nil
	}
	if sha256.Sum256(c.buf[:c.verify]) != c.verifySum {
		return fmt.Errorf("%w: the server's WAL of segment %s differs from the pieces the repository holds; the primary diverged (a failover without a timeline switch?) or another cluster writes here", errConflict, c.seg.Name(s.segSize))
	}
	c.verify = 0
	return nil
}

var errBufferWait = errors.New("waiting for a buffer")

// accept adds an XLogData message to the filling segment(s). It returns
// errBufferWait, with the unconsumed rest in *rest, when a segment completed
// and no buffer is free for the next.
func (s *session) accept(x *xlogData, rest *[]byte) error {
	if x.start != s.received {
		return fmt.Errorf("server sent WAL at %s, expected %s", x.start, s.received)
	}
	data := x.data
	for len(data) > 0 {
		if s.cur == nil {
			next := wal.SegmentOf(s.tli, s.received, s.segSize)
			if !s.newSegment(next) {
				*rest = data
				return errBufferWait
			}
		}
		c := s.cur
		n := copy(c.buf[c.filled:], data)
		s.index(data[:n])
		c.filled += uint32(n)
		s.received += wal.LSN(n)
		s.cfg.Stats.received.Store(uint64(s.received))
		data = data[n:]
		if err := s.verifyPrefix(); err != nil {
			return err
		}
		if uint64(c.filled) == s.segSize {
			s.finishSegment(false)
		}
	}
	*rest = nil
	return nil
}
