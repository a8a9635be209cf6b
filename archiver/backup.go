package archiver

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/lease"
)

// BackupLease names the lease held by a base backup or a prune.
const BackupLease = "backup"

// DefaultPartSize is where archives are cut into parts by default: a
// database of a few GiB restores with every core busy, and a part's upload
// holds little memory.
const DefaultPartSize = 128 << 20

// BackupConfig configures a base backup.
type BackupConfig struct {
	// ConnString reaches the primary, as for Run.
	ConnString string
	// Label names the backup on the server; default "walship <id>".
	Label string
	// Fast asks for an immediate checkpoint instead of a spread one.
	Fast bool
	// MaxRate bounds the server's transfer rate in kB/s (32 to 1048576); 0
	// means unlimited.
	MaxRate int
	// Slot is the archiver's slot, used to ship the backup's last WAL when
	// no archiver is running.
	Slot string
	// Concurrency is the zstd goroutines per archive; default 2.
	Concurrency int
	// PartSize is the size at which an archive is cut into another part,
	// at an entry boundary, so that a restore can extract the parts in
	// parallel; default DefaultPartSize.
	PartSize int64
	// WALTimeout bounds the wait for a running archiver to store the
	// segment holding the backup's end; default 5 minutes.
	WALTimeout time.Duration
	// LeaseTTL is how long the backup lease outlives a killed backup;
	// default lease.DefaultTTL.
	LeaseTTL time.Duration
	// Progress, if not nil, counts the bytes streamed.
	Progress *progress.Meter
	// EstimateSize gives Progress the backup's size as the server
	// estimates it, which costs the server a scan of its data directory
	// first (pg_basebackup -P's price).
	EstimateSize bool
	// Log receives progress; nil discards.
	Log *slog.Logger
	// Stats, if set, records that a backup runs and how it ended.
	Stats *Stats
}

// Backup takes a base backup through BASE_BACKUP and streams it into repo:
// every archive and the server's backup_manifest through the codec, then,
// once the WAL up to the backup's end is in the repository, backup.json. A
// backup that fails at any point leaves no backup.json, so it does not exist.
func Backup(ctx context.Context, repo *catalog.Repo, cfg BackupConfig) (b catalog.Backup, err error) {
	if cfg.Stats != nil {
		cfg.Stats.backupRunning.Store(true)
		start := time.Now()
		defer func() {
			cfg.Stats.backupDone(BackupStats{ID: b.ID, Finished: time.Now(), Duration: time.Since(start), Size: b.RawSize, StoredSize: b.StoredSize}, err)
		}()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2
	}
	if cfg.PartSize <= 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.WALTimeout <= 0 {
		cfg.WALTimeout = 5 * time.Minute
	}
	if cfg.Slot == "" {
		cfg.Slot = DefaultSlot
	}
	conn, err := connect(ctx, cfg.ConnString, "walship_backup")
	if err != nil {
		return catalog.Backup{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	// The set-up's exchanges are bounded as a session's are; the stream
	// is not: the server sends nothing while a spread checkpoint runs.
	askCtx, cancelAsk := context.WithTimeout(ctx, DefaultReceiveTimeout)
	defer cancelAsk()
	srv, err := identify(askCtx, conn)
	if err != nil {
		return catalog.Backup{}, err
	}
	if _, err := repo.Init(ctx, catalog.Meta{SystemID: srv.SystemID, SegmentSize: srv.SegmentSize}); err != nil {
		return catalog.Backup{}, err
	}
	// The archiver's slot must exist before the backup starts, so that the
	// server keeps every segment from the backup's start until it is in the
	// repository, even when no archiver has run yet.
	if created, err := ensureSlot(askCtx, conn, cfg.Slot); err != nil {
		return catalog.Backup{}, err
	} else if created {
		cfg.Log.Info("created replication slot for the backup's WAL", slog.String(keySlot, cfg.Slot))
	}
	// One backup (or prune) at a time; the lease also tells prune that
	// the objects of this unfinished backup are in use.
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = lease.DefaultTTL
	}
	held, release, err := holdLease(ctx, repo, lease.Options{Name: BackupLease, TTL: cfg.LeaseTTL, ClockSkew: min(lease.DefaultClockSkew, cfg.LeaseTTL/3), Log: cfg.Log})
	if err != nil {
		return catalog.Backup{}, err
	}
	defer release()
	start := time.Now()
	id, err := repo.NextBackupID(ctx, start)
	if err != nil {
		return catalog.Backup{}, err
	}
	if id != catalog.NewBackupID(start) {
		cfg.Log.Warn("this host's clock is behind the newest backup's id; the new backup's id follows it",
			slog.String("backup", id), slog.Time("clock", start.UTC()))
	}
	b = catalog.Backup{
		ID:          id,
		SystemID:    srv.SystemID,
		PGVersion:   srv.VersionNum,
		SegmentSize: srv.SegmentSize,
		StartTime:   start.UTC(),
		Compression: repo.Codec().Compression.String(),
		Encrypted:   len(repo.Codec().Recipients) > 0,
	}
	b.Label = cfg.Label
	if b.Label == "" {
		b.Label = "walship " + b.ID
	}
	log := cfg.Log.With(slog.String("backup", b.ID))
	log.Info("base backup starting", slog.Bool("fast_checkpoint", cfg.Fast))

	sink := &repoSink{repo: repo.WithConcurrency(cfg.Concurrency), id: b.ID, partSize: cfg.PartSize, meter: cfg.Progress}
	bbOpts := BaseBackupOptions{Label: b.Label, Fast: cfg.Fast, MaxRate: cfg.MaxRate, Log: log}
	if cfg.Progress != nil && cfg.EstimateSize {
		bbOpts.Estimate = cfg.Progress.SetTotal
	}
	res, err := StreamBaseBackup(ctx, conn, srv.VersionNum, bbOpts, sink)
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("base backup %s: %w", b.ID, err)
	}
	b.StopTime = time.Now().UTC()
	b.StartLSN, b.EndLSN = res.StartLSN, res.EndLSN
	b.StartTLI, b.EndTLI = uint32(res.StartTLI), uint32(res.EndTLI)
	b.Objects = sink.objects()
	for _, o := range b.Objects {
		b.RawSize += o.Size
		b.StoredSize += o.StoredSize
	}
	log.Info("base backup streamed; waiting for its WAL", slog.String("start_lsn", b.StartLSN.String()), slog.String("end_lsn", b.EndLSN.String()),
		slog.Int64("raw_bytes", b.RawSize), slog.Int64("stored_bytes", b.StoredSize))

	if err := waitForWAL(ctx, repo, b, cfg, log); err != nil {
		return catalog.Backup{}, fmt.Errorf("base backup %s: %w", b.ID, err)
	}
	select {
	case <-held.Lost():
		return catalog.Backup{}, fmt.Errorf("base backup %s: %w: a prune or another backup may have started", b.ID, lease.ErrLost)
	default:
	}
	if err := repo.WriteBackup(ctx, b); err != nil {
		return catalog.Backup{}, fmt.Errorf("base backup %s: write backup.json: %w", b.ID, err)
	}
	log.Info("base backup done", slog.Duration("took", time.Since(start)))
	return b, nil
}

// waitForWAL returns once the segment holding the backup's end is stored in
// full. With no archiver running it ships the WAL itself (a bounded archiver
// run on the slot); with one running, it waits for it, and ships the WAL
// itself once that archiver's lease has expired (an archiver killed just
// before, as a serverless schedule may leave one, never stores it).
func waitForWAL(ctx context.Context, repo *catalog.Repo, b catalog.Backup, cfg BackupConfig, log *slog.Logger) error {
	seg := wal.SegmentOf(wal.TimeLineID(b.EndTLI), b.EndLSN-1, b.SegmentSize)
	key := catalog.SegmentKey(seg, b.SegmentSize)
	stored := func() (bool, error) {
		_, err := repo.Store().Stat(ctx, key)
		if errors.Is(err, storage.ErrNotExist) {
			return false, nil
		}
		return err == nil, err
	}
	run := Config{ConnString: cfg.ConnString, Slot: cfg.Slot, UntilCaughtUp: true, Log: log}
	if b.StartTLI == b.EndTLI {
		run.StartBefore = b.StartLSN // on the timeline the archiver starts on
	}
	// ship runs the bounded archiver; while another holds the lease, it
	// returns when to try again: once that lease could have expired.
	ship := func() (time.Time, error) {
		_, err := Run(ctx, repo, run)
		var held *lease.HeldError
		switch {
		case errors.As(err, &held):
			log.Info("an archiver is running; waiting for it to store the backup's last segment",
				slog.String(keySegment, seg.Name(b.SegmentSize)), slog.String("holder", held.Holder))
			at := held.Expires.Add(lease.DefaultClockSkew + time.Second)
			if soon := time.Now().Add(time.Second); at.Before(soon) {
				at = soon
			}
			return at, nil
		case err != nil:
			return time.Time{}, fmt.Errorf("ship the WAL the backup needs: %w", err)
		}
		return time.Time{}, nil
	}
	retryAt, err := ship()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(cfg.WALTimeout)
	for {
		ok, err := stored()
		if err != nil {
			return err
		}
		if ok {
			return checkBackupWAL(ctx, repo, b)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("segment %s, which holds the backup's end at %s, is not in the repository after %s: is the archiver running and keeping up? The backup is not usable without it", seg.Name(b.SegmentSize), b.EndLSN, cfg.WALTimeout)
		}
		if !retryAt.IsZero() && time.Now().After(retryAt) {
			if retryAt, err = ship(); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// repoSink stores each stream of a base backup as objects of the backup:
// archives in parts of about partSize bytes.
type repoSink struct {
	repo     *catalog.Repo
	id       string
	partSize int64
	meter    *progress.Meter // nil: none
	mu       sync.Mutex
	objs     []catalog.BackupObject
}

func (s *repoSink) Archive(ctx context.Context, a BackupArchive) (BackupWriter, error) {
	return newSplitWriter(s.partSize, func(part int) BackupWriter {
		o := catalog.BackupObject{Name: catalog.PartName(a.Name, part), Part: part, OID: a.OID, Location: a.Location}
		return s.open(ctx, o)
	}), nil
}

func (s *repoSink) Manifest(ctx context.Context) (BackupWriter, error) {
	return s.open(ctx, catalog.BackupObject{Name: "backup_manifest"}), nil
}

// objects lists the stored objects: archives by tablespace and part, then
// the manifest.
func (s *repoSink) objects() []catalog.BackupObject {
	s.mu.Lock()
	defer s.mu.Unlock()
	objs := slices.Clone(s.objs)
	slices.SortFunc(objs, catalog.CompareBackupObjects)
	return objs
}

// open starts storing one object; its writer's CloseWithError waits for the
// store and reports its error.
func (s *repoSink) open(ctx context.Context, o catalog.BackupObject) BackupWriter {
	pr, pw := io.Pipe()
	w := &objectWriter{pw: pw, done: make(chan error, 1), meter: s.meter}
	go func() {
		obj, err := s.repo.Create(ctx, catalog.BackupObjectKey(s.id, o.Name), pr)
		_ = pr.CloseWithError(err)
		if err == nil {
			o.Size, o.StoredSize, o.SHA256 = obj.Size, obj.StoredSize, hex.EncodeToString(obj.Sum[:])
			s.mu.Lock()
			s.objs = append(s.objs, o)
			s.mu.Unlock()
		}
		w.done <- err
	}()
	return w
}

// objectWriter feeds a pipe to a store; Write returns once the bytes are
// consumed, so callers may reuse them.
type objectWriter struct {
	pw    *io.PipeWriter
	done  chan error
	meter *progress.Meter
}

func (w *objectWriter) Write(p []byte) (int, error) {
	n, err := w.pw.Write(p)
	if w.meter != nil {
		w.meter.Add(int64(n))
	}
	return n, err
}

func (w *objectWriter) CloseWithError(err error) error {
	_ = w.pw.CloseWithError(err)
	serr := <-w.done
	if err != nil {
		return err
	}
	return serr
}

// checkBackupWAL checks that every segment from the backup's start to its
// end is in the repository: recovery from the backup reads all of them.
func checkBackupWAL(ctx context.Context, repo *catalog.Repo, b catalog.Backup) error {
	if b.StartTLI != b.EndTLI {
		return nil // a backup across a timeline switch (from a standby): the end segment is what can be checked
	}
	tli := wal.TimeLineID(b.StartTLI)
	first := wal.SegmentOf(tli, b.StartLSN, b.SegmentSize)
	last := wal.SegmentOf(tli, b.EndLSN-1, b.SegmentSize)
	for no := first.No; no <= last.No; no++ {
		seg := wal.Segment{TLI: tli, No: no}
		if _, err := repo.Store().Stat(ctx, catalog.SegmentKey(seg, b.SegmentSize)); err != nil {
			return fmt.Errorf("segment %s, which the backup needs (it spans %s to %s), is not in the repository: %w; the WAL from the backup's start was not archived (was the slot created after the backup began?)",
				seg.Name(b.SegmentSize), b.StartLSN, b.EndLSN, err)
		}
	}
	return nil
}
