// Package lease keeps a repository to one writer of a kind (the archiver,
// or one backup or prune) with leases built on conditional create: expiring,
// renewed, taken over once expired, and self-fencing when a renewal fails.
package lease

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/walship/walship/storage"
)

// A lease keeps a repository to one archiver (or backup). The store offers no
// compare-and-swap, only conditional create (storage.Creator), so the lease
// is a series of generations: Prefix followed by the generation in 16
// upper-case hex digits, each a small plain-JSON object (leaseRecord). The
// highest generation is the lease. Its holder renews it by replacing its own
// object; a taker never replaces an object but creates the next generation,
// which of several takers only one can do. Generations only grow: a release
// marks the object released instead of deleting it, and the winner of a
// generation deletes only the ones below it, so that no number is ever reused
// (a reused number would let a stale holder's late write land on a newer
// holder's object).
//
// Without compare-and-swap a holder cannot renew atomically, so safety rests
// on time: the holder fences itself, on its own monotonic clock, a sixth of
// the TTL before the expiry it wrote, and counts a renewal only if it
// completed before that point; a taker waits until the expiry plus
// ClockSkew has passed on its wall clock. Two archivers therefore never write
// at once as long as their clocks disagree by less than ClockSkew plus that
// sixth of the TTL, and the archiver stops writing when Lost is closed.

// Prefix is the common prefix of the archiver lease's generations
// (storage/catalog documents the layout).
const Prefix = "locks/archiver/"

// Defaults and limits of Options.
const (
	DefaultTTL       = 30 * time.Second
	DefaultClockSkew = 5 * time.Second
	MinTTL           = 100 * time.Millisecond
)

const (
	leaseMaxObject   = 64 << 10 // bytes of a lease object read before giving up
	leaseMaxHolder   = 1 << 10  // bytes of a holder name
	leaseMaxAttempts = 8        // lost creation races in one acquisition
)

// Attribute keys of the lease's log records.
const (
	leaseAttrKey        = "key"
	leaseAttrHolder     = "holder"
	leaseAttrGeneration = "generation"
	leaseAttrExpires    = "expires"
	leaseAttrUntil      = "until"
	leaseAttrError      = "error"
	leaseAttrReason     = "reason"
	leaseAttrLostIn     = "lost_in"
)

// ErrLost reports that the lease was taken over, removed, or not renewed
// in time. The holder must stop writing to the repository at once.
var ErrLost = errors.New("repository lease lost: another archiver may now write the repository; stop writing (walship must exit and be started again)")

var errLeaseReleased = errors.New("repository lease already released")

// errLeaseUnreadable marks a lease object that is not a lease record.
var errLeaseUnreadable = errors.New("not a lease record")

// HeldError reports that another archiver holds the lease.
type HeldError struct {
	Key     string    // the lease object
	Holder  string    // who holds it; empty when the object cannot be read
	Expires time.Time // when it expires unless renewed
}

func (e *HeldError) Error() string {
	exp := e.Expires.UTC().Format(time.RFC3339)
	if e.Holder == "" {
		return fmt.Sprintf("repository lease %s cannot be read, so it counts as held until %s; "+
			"stop any other archiver of this repository, or wait until then", e.Key, exp)
	}
	return fmt.Sprintf("repository lease is held by %s until %s unless it renews it: another archiver is writing this repository; "+
		"stop it, or wait (a clean stop releases the lease at once, a crashed archiver's lease expires)", strconv.Quote(e.Holder), exp)
}

// Options configure Acquire.
type Options struct {
	// Name is what the lease guards: "archiver" (the default: one WAL
	// archiver per repository) or "backup" (one base backup or prune at a
	// time). Its generations live under locks/<Name>/.
	Name string
	// TTL is how long the lease lasts without renewal; Keep renews it every
	// third of it. Zero means DefaultTTL; at least MinTTL.
	TTL time.Duration
	// ClockSkew is how far the clocks of two archivers may disagree; an
	// expired lease is taken over only ClockSkew after its expiry. Zero
	// means DefaultClockSkew.
	ClockSkew time.Duration
	// Holder names this archiver in the lease and in other archivers'
	// errors; it must be unique. Empty means host/pid/random id.
	Holder string
	// Wait makes Acquire wait for a held lease to become free, until
	// ctx ends, instead of failing with *HeldError.
	Wait bool
	// Now is the wall clock for the times in lease objects; nil means
	// time.Now. Self-fencing always uses the monotonic clock.
	Now func() time.Time
	// Log receives lease events; nil discards.
	Log *slog.Logger
}

// validName is what a lease name may be: it names a directory under locks/.
var validName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

func (o Options) prefix() string {
	if o.Name == "" {
		return Prefix
	}
	return "locks/" + o.Name + "/"
}

func (o *Options) setDefaults() error {
	if o.Name != "" && !validName.MatchString(o.Name) {
		return fmt.Errorf("lease name %q: use lower-case letters, digits and underscores", o.Name)
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.TTL < MinTTL {
		return fmt.Errorf("lease TTL %s: use at least %s", o.TTL, MinTTL)
	}
	if o.ClockSkew == 0 {
		o.ClockSkew = DefaultClockSkew
	}
	if o.ClockSkew < 0 {
		return fmt.Errorf("lease clock skew %s is negative", o.ClockSkew)
	}
	if o.Holder == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "unknown-host"
		}
		var id [6]byte
		_, _ = rand.Read(id[:])
		o.Holder = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(id[:]))
	}
	if len(o.Holder) > leaseMaxHolder {
		return fmt.Errorf("lease holder name is %d bytes long; use at most %d", len(o.Holder), leaseMaxHolder)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// fenceMargin is how long before the expiry it wrote a holder stops
// counting on its lease.
func (o *Options) fenceMargin() time.Duration { return o.TTL / 6 }

// leaseRecord is the content of a lease object.
type leaseRecord struct {
	Holder   string    `json:"holder"`
	Acquired time.Time `json:"acquired"`
	Renewed  time.Time `json:"renewed"`
	Expires  time.Time `json:"expires"`
	Released bool      `json:"released,omitempty"` // free at once
}

// Key is the key of the archiver lease's generation gen.
func Key(gen uint64) string { return leaseKeyIn(Prefix, gen) }

func leaseKeyIn(prefix string, gen uint64) string { return fmt.Sprintf("%s%016X", prefix, gen) }

// parseLeaseKey returns the generation that key names under prefix, if it
// is one.
func parseLeaseKey(prefix, key string) (uint64, bool) {
	name, ok := strings.CutPrefix(key, prefix)
	if !ok || len(name) != 16 {
		return 0, false
	}
	gen, err := strconv.ParseUint(name, 16, 64)
	if err != nil || gen == 0 || leaseKeyIn(prefix, gen) != key {
		return 0, false
	}
	return gen, true
}

// leaseTop is the highest generation in a listing; gen 0 means none.
type leaseTop struct {
	gen  uint64
	info storage.ObjectInfo
	all  []uint64 // every generation listed
}

func listLease(ctx context.Context, s storage.Store, prefix string, log *slog.Logger) (leaseTop, error) {
	top, err := listLeaseOnce(ctx, s, prefix, log)
	if err != nil || len(top.all) > 0 {
		return top, err
	}
	// An S3-compatible server may miss an object replaced during the
	// listing (MinIO on one drive does); an empty prefix is rare, so it is
	// listed again before it is believed.
	select {
	case <-ctx.Done():
		return leaseTop{}, ctx.Err()
	case <-time.After(20 * time.Millisecond):
	}
	return listLeaseOnce(ctx, s, prefix, log)
}

func listLeaseOnce(ctx context.Context, s storage.Store, prefix string, log *slog.Logger) (leaseTop, error) {
	var top leaseTop
	for info, err := range s.List(ctx, prefix) {
		if err != nil {
			return leaseTop{}, fmt.Errorf("list %s: %w", prefix, err)
		}
		gen, ok := parseLeaseKey(prefix, info.Key)
		if !ok {
			log.Warn("ignoring an object that is not a lease generation", slog.String(leaseAttrKey, info.Key))
			continue
		}
		top.all = append(top.all, gen)
		if gen > top.gen {
			top.gen, top.info = gen, info
		}
	}
	return top, nil
}

// readLease reads and parses a lease object. A missing object gives
// storage.ErrNotExist; one that is not a lease record gives
// errLeaseUnreadable.
func readLease(ctx context.Context, s storage.Store, key string) (leaseRecord, error) {
	rc, err := s.Get(ctx, key, 0)
	if err != nil {
		return leaseRecord{}, err
	}
	b, err := io.ReadAll(io.LimitReader(rc, leaseMaxObject+1))
	_ = rc.Close()
	if err != nil {
		return leaseRecord{}, fmt.Errorf("get %s: %w", key, err)
	}
	if len(b) > leaseMaxObject {
		return leaseRecord{}, fmt.Errorf("lease %s: %w: larger than %d bytes", key, errLeaseUnreadable, leaseMaxObject)
	}
	var rec leaseRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return leaseRecord{}, fmt.Errorf("lease %s: %w: %v", key, errLeaseUnreadable, err)
	}
	if rec.Holder == "" || rec.Expires.IsZero() {
		return leaseRecord{}, fmt.Errorf("lease %s: %w: no holder or expiry", key, errLeaseUnreadable)
	}
	return rec, nil
}

func (r leaseRecord) encode() (io.Reader, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode lease: %w", err) // a time outside years 0-9999
	}
	return bytes.NewReader(append(b, '\n')), nil
}

// Lease is a held archiver lease. Its methods are safe for concurrent use.
type Lease struct {
	store    storage.Store
	opts     Options
	gen      uint64
	key      string
	acquired time.Time // wall clock

	renewMu sync.Mutex // one renewal or release at a time

	mu       sync.Mutex
	deadline time.Time   // monotonic: the lease is lost from then on
	fence    *time.Timer // fires at deadline
	lostErr  error       // why it was lost; nil while held
	released bool
	done     chan struct{} // closed once lost or released
	lost     chan struct{} // closed once lost
}

// Acquire takes the archiver lease of the repository in s, which must
// implement storage.Creator. When another archiver holds it, Acquire
// fails with *HeldError or, with opts.Wait, waits until it is free or
// ctx ends. The caller keeps the lease with Keep, stops writing as soon as
// Lost is closed, and gives the lease up with Release once it has stopped
// writing.
func Acquire(ctx context.Context, s storage.Store, opts Options) (*Lease, error) {
	c, ok := s.(storage.Creator)
	if !ok {
		return nil, errors.New("acquire lease: the store cannot create objects conditionally (no storage.Creator), which the archiver lease needs; use a store that supports conditional writes (If-None-Match)")
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	var waiting *HeldError
	for {
		l, err := tryAcquire(ctx, s, c, opts)
		var held *HeldError
		if err == nil || !opts.Wait || !errors.As(err, &held) {
			return l, err
		}
		if waiting == nil || waiting.Holder != held.Holder {
			opts.Log.Info("repository lease is held; waiting", slog.String(leaseAttrHolder, held.Holder),
				slog.Time(leaseAttrExpires, held.Expires), slog.String(leaseAttrKey, held.Key))
		}
		waiting = held
		wait := min(opts.TTL/6, held.Expires.Add(opts.ClockSkew).Sub(opts.Now()))
		t := time.NewTimer(max(wait, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (stopped waiting: %w)", err, context.Cause(ctx))
		case <-t.C:
		}
	}
}

func tryAcquire(ctx context.Context, s storage.Store, c storage.Creator, opts Options) (*Lease, error) {
	for range leaseMaxAttempts {
		top, err := listLease(ctx, s, opts.prefix(), opts.Log)
		if err != nil {
			return nil, fmt.Errorf("acquire lease: %w", err)
		}
		gen := uint64(1)
		var prev leaseRecord
		if top.gen != 0 {
			prev, err = readLease(ctx, s, top.info.Key)
			now := opts.Now()
			switch {
			case errors.Is(err, storage.ErrNotExist):
				continue // deleted since the listing: look again
			case errors.Is(err, errLeaseUnreadable):
				until := top.info.ModTime.Add(opts.TTL)
				if now.Before(until.Add(opts.ClockSkew)) {
					opts.Log.Warn("the repository lease object cannot be read; treating it as held until its last write plus the lease TTL",
						slog.String(leaseAttrKey, top.info.Key), slog.Time(leaseAttrUntil, until), slog.Any(leaseAttrError, err))
					return nil, &HeldError{Key: top.info.Key, Expires: until}
				}
				opts.Log.Warn("taking over an unreadable repository lease object unchanged for longer than the lease TTL",
					slog.String(leaseAttrKey, top.info.Key), slog.Any(leaseAttrError, err))
			case err != nil:
				return nil, fmt.Errorf("acquire lease: %w", err)
			case !prev.Released && now.Before(prev.Expires.Add(opts.ClockSkew)):
				return nil, &HeldError{Key: top.info.Key, Holder: prev.Holder, Expires: prev.Expires}
			case !prev.Released:
				opts.Log.Warn("taking over an expired repository lease", slog.String(leaseAttrHolder, prev.Holder),
					slog.Time(leaseAttrExpires, prev.Expires), slog.String(leaseAttrKey, top.info.Key))
			}
			gen = top.gen + 1
		}

		key := leaseKeyIn(opts.prefix(), gen)
		start := time.Now()
		wall := opts.Now().UTC()
		rec := leaseRecord{Holder: opts.Holder, Acquired: wall, Renewed: wall, Expires: wall.Add(opts.TTL)}
		body, err := rec.encode()
		if err != nil {
			return nil, err
		}
		err = c.Create(ctx, key, body)
		if errors.Is(err, storage.ErrExist) {
			// Another taker won, or a retry of our own request found
			// what the first attempt created.
			got, rerr := readLease(ctx, s, key)
			if rerr != nil || got.Holder != rec.Holder || !got.Acquired.Equal(rec.Acquired) {
				continue // look again: the winner's lease is held
			}
		} else if err != nil {
			return nil, fmt.Errorf("acquire lease: %w", err)
		}
		// A listing that missed a newer generation would have us reuse a
		// deleted one: the newest generation must be ours.
		after, err := listLease(ctx, s, opts.prefix(), opts.Log)
		if err != nil {
			return nil, fmt.Errorf("acquire lease: %w", err)
		}
		if after.gen > gen {
			opts.Log.Warn("created a lease generation older than the newest; withdrawing it",
				slog.String(leaseAttrKey, key), slog.String("newest", after.info.Key))
			if err := s.Delete(ctx, key); err != nil {
				return nil, fmt.Errorf("acquire lease: withdraw %s: %w", key, err)
			}
			continue
		}
		if took := time.Since(start); took >= opts.TTL-opts.fenceMargin() {
			return nil, fmt.Errorf("acquire lease: creating %s took %s, too long for a lease TTL of %s; raise the TTL or check the store", key, took.Round(time.Millisecond), opts.TTL)
		}

		l := &Lease{
			store:    s,
			opts:     opts,
			gen:      gen,
			key:      key,
			acquired: wall,
			deadline: start.Add(opts.TTL - opts.fenceMargin()),
			done:     make(chan struct{}),
			lost:     make(chan struct{}),
		}
		l.mu.Lock()
		l.fence = time.AfterFunc(time.Until(l.deadline), l.checkFence)
		l.mu.Unlock()
		opts.Log.Info("acquired the repository lease", slog.String(leaseAttrKey, key),
			slog.Uint64(leaseAttrGeneration, gen), slog.String(leaseAttrHolder, opts.Holder))
		for _, g := range top.all {
			if g < gen {
				if err := s.Delete(ctx, leaseKeyIn(opts.prefix(), g)); err != nil {
					opts.Log.Warn("delete an old lease generation", slog.String(leaseAttrKey, leaseKeyIn(opts.prefix(), g)), slog.Any(leaseAttrError, err))
				}
			}
		}
		return l, nil
	}
	return nil, fmt.Errorf("acquire lease: lost the race to create the next generation %d times in a row; try again", leaseMaxAttempts)
}

// Key is the lease object's key.
func (l *Lease) Key() string { return l.key }

// Generation is the lease's generation, which grows with every new holder.
func (l *Lease) Generation() uint64 { return l.gen }

// Holder is the name this archiver holds the lease under.
func (l *Lease) Holder() string { return l.opts.Holder }

// Lost is closed once the lease is lost: taken over, removed, or not renewed
// in time. A timer closes it at the self-fencing deadline even while a
// renewal hangs; Renew (run by Keep) finds the other causes.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Keep renews the lease every third of its TTL until ctx ends or the lease
// is released (returning nil) or lost (returning ErrLost). Failed
// renewals are logged and retried; each is bounded by the time the lease
// is good for. Start it right after Acquire: the first renewal is due a
// third of the TTL later.
func (l *Lease) Keep(ctx context.Context) error {
	t := time.NewTicker(l.opts.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.done:
			return l.err()
		case <-t.C:
		}
		l.mu.Lock()
		deadline := l.deadline
		l.mu.Unlock()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := l.Renew(rctx)
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, ErrLost):
			return err
		case errors.Is(err, errLeaseReleased) || ctx.Err() != nil:
			return nil
		default:
			l.opts.Log.Warn("renewing the repository lease failed; retrying", slog.String(leaseAttrKey, l.key),
				slog.Duration(leaseAttrLostIn, time.Until(deadline).Round(time.Millisecond)), slog.Any(leaseAttrError, err))
		}
	}
}

// Renew extends the lease by its TTL from now. It returns ErrLost if a
// newer generation exists, the lease object is gone, or the lease was not
// renewed in time, and a plain error if the store failed (the lease then
// stays held until its deadline).
func (l *Lease) Renew(ctx context.Context) error {
	l.renewMu.Lock()
	defer l.renewMu.Unlock()
	start := time.Now()
	wall := l.opts.Now().UTC()
	if err := l.usable(start); err != nil {
		return err
	}
	top, err := listLease(ctx, l.store, l.opts.prefix(), l.opts.Log)
	if err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	switch {
	case top.gen > l.gen:
		return l.lose(fmt.Sprintf("generation %d was taken by another archiver", top.gen))
	case top.gen < l.gen:
		return l.lose("the lease object was removed")
	}
	rec := leaseRecord{Holder: l.opts.Holder, Acquired: l.acquired, Renewed: wall, Expires: wall.Add(l.opts.TTL)}
	body, err := rec.encode()
	if err != nil {
		return err
	}
	if err := l.store.Put(ctx, l.key, body); err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(time.Now()); err != nil {
		// The write landed too late to count: a taker may have read the
		// old expiry already.
		return err
	}
	l.deadline = start.Add(l.opts.TTL - l.opts.fenceMargin())
	return nil
}

// Release gives the lease up so that the next archiver can start at once.
// Call it only once this archiver has stopped writing. It marks the lease
// object released, unless another archiver has taken the lease since.
func (l *Lease) Release(ctx context.Context) error {
	l.renewMu.Lock()
	defer l.renewMu.Unlock()
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return nil
	}
	l.released = true
	l.fence.Stop()
	if l.lostErr == nil {
		close(l.done)
	}
	l.mu.Unlock()

	top, err := listLease(ctx, l.store, l.opts.prefix(), l.opts.Log)
	if err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	if top.gen != l.gen {
		l.opts.Log.Info("not releasing the repository lease: another archiver holds it", slog.String(leaseAttrKey, l.key))
		return nil
	}
	wall := l.opts.Now().UTC()
	rec := leaseRecord{Holder: l.opts.Holder, Acquired: l.acquired, Renewed: wall, Expires: wall, Released: true}
	body, err := rec.encode()
	if err != nil {
		return err
	}
	if err := l.store.Put(ctx, l.key, body); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	l.opts.Log.Info("released the repository lease", slog.String(leaseAttrKey, l.key))
	return nil
}

// usable reports whether the lease may still be renewed at monotonic time
// now, marking it lost if its deadline has passed.
func (l *Lease) usable(now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.usableLocked(now)
}

func (l *Lease) usableLocked(now time.Time) error {
	switch {
	case l.released:
		return errLeaseReleased
	case l.lostErr != nil:
		return l.lostErr
	case !now.Before(l.deadline):
		return l.loseLocked("it was not renewed in time")
	}
	return nil
}

// checkFence runs when the fence timer fires.
func (l *Lease) checkFence() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released || l.lostErr != nil {
		return
	}
	if d := time.Until(l.deadline); d > 0 {
		l.fence.Reset(d) // renewed since the timer was set
		return
	}
	l.loseLocked("it was not renewed in time")
}

func (l *Lease) lose(reason string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return errLeaseReleased
	}
	if l.lostErr != nil {
		return l.lostErr
	}
	return l.loseLocked(reason)
}

func (l *Lease) loseLocked(reason string) error {
	l.lostErr = ErrLost
	l.fence.Stop()
	close(l.lost)
	close(l.done)
	l.opts.Log.Error("lost the repository lease; stop writing", slog.String(leaseAttrKey, l.key),
		slog.String(leaseAttrReason, reason))
	return l.lostErr
}

// err is why Keep stopped once done is closed.
func (l *Lease) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostErr
}
