package benchenv

import (
	"bytes"
	"context"
	"os"
	"syscall"
	"time"
)

// Usage is what one run of a command cost.
type Usage struct {
	Wall float64 // seconds
	CPU  float64 // user+sys seconds of the process and the children it waited for (rusage)
	// MaxRSS is the peak resident set of the largest single process of the
	// run (rusage's ru_maxrss), in bytes.
	MaxRSS int64
	// TreeRSS is the peak of the summed resident sets of the process and
	// its descendants, sampled every 20 ms (runuser left out), in bytes:
	// what a tool that runs several processes holds at once.
	TreeRSS int64
	// FileRSS is the peak file-backed part of the first process's resident
	// set, sampled: the binary's own pages.
	FileRSS int64
}

// Add accumulates runs done one after the other: times add up, peaks are
// the largest.
func (u Usage) Add(v Usage) Usage {
	return Usage{Wall: u.Wall + v.Wall, CPU: u.CPU + v.CPU,
		MaxRSS: max(u.MaxRSS, v.MaxRSS), TreeRSS: max(u.TreeRSS, v.TreeRSS), FileRSS: max(u.FileRSS, v.FileRSS)}
}

// Timed runs args in a process group of its own (see Command), sampling
// the memory of its process tree, and returns what it cost, with its
// combined output for when it fails. discard sends stdout to the null
// device instead.
func Timed(ctx context.Context, env, args []string, discard bool) (Usage, []byte, error) {
	cmd := Command(ctx, env, args)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if discard {
		cmd.Stdout = nil // the null device
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Usage{}, nil, err
	}
	done := make(chan struct{})
	sampled := make(chan Usage, 1)
	go func() {
		var peak Usage
		defer func() { sampled <- peak }()
		for {
			peak.TreeRSS = max(peak.TreeRSS, treeRSS(cmd.Process.Pid))
			peak.FileRSS = max(peak.FileRSS, fileRSS(cmd.Process.Pid))
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	u := Usage{Wall: time.Since(start).Seconds()}
	close(done)
	peak := <-sampled
	u.TreeRSS, u.FileRSS = peak.TreeRSS, peak.FileRSS
	if err != nil {
		return Usage{}, out.Bytes(), err
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		u.CPU = seconds(ru.Utime) + seconds(ru.Stime)
	}
	u.MaxRSS = MaxRSS(cmd.ProcessState)
	u.TreeRSS = max(u.TreeRSS, u.MaxRSS)
	return u, out.Bytes(), nil
}

// MaxRSS is the peak resident set, in bytes, of the largest of a finished
// process and the descendants it waited for (wait4's ru_maxrss, in KiB).
func MaxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss * 1024
	}
	return 0
}

func seconds(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
