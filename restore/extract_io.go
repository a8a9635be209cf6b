package restore

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// syncer fsyncs and closes the files handed to it on a few goroutines,
// which end in wait; with NoSync it only closes them.
type syncer struct {
	files chan syncJob
	wg    sync.WaitGroup
	mu    sync.Mutex
	err   error // the first failure
}

type syncJob struct {
	f    *os.File
	what string // `entry "x"` or `directory x`, for errors
}

func newSyncer(noSync bool) *syncer {
	s := &syncer{}
	if !noSync {
		s.files = make(chan syncJob, syncWorkers)
		for range syncWorkers {
			s.wg.Go(s.work)
		}
	}
	return s
}

func (s *syncer) work() {
	for j := range s.files {
		err := j.f.Sync()
		if cerr := j.f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			s.fail(fmt.Errorf("extract %s: sync: %w", j.what, err))
		}
	}
}

// fail records err unless a failure was recorded before, and returns the
// first one; fail(nil) only returns it.
func (s *syncer) fail(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
	return s.err
}

// add has f synced and closed, or with NoSync closes it now, and returns
// the first failure so far.
func (s *syncer) add(f *os.File, what string) error {
	if s.files != nil {
		s.files <- syncJob{f, what}
		return s.fail(nil)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("extract %s: %w", what, err)
	}
	return nil
}

// wait ends the goroutines once they have synced what they were given and
// returns the first failure.
func (s *syncer) wait() error {
	if s.files != nil {
		close(s.files)
		s.wg.Wait()
	}
	return s.fail(nil)
}

// countingReader counts the bytes archive/tar has read, which tells where a
// header starts, and how many of the last ones were zero (up to two
// blocks), which tells whether the end-of-archive marker was there:
// tar.Reader reads no further than it needs.
type countingReader struct {
	r     io.Reader
	n     int64
	zeros int // trailing zero bytes read, at most 2*tarBlock
}
