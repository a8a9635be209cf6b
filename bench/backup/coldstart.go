package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/walship/walship/bench/internal/benchenv"
)

// coldStartBench measures what a serverless run pays before it does work:
// the binary's size, starting the process (--version), the first useful
// log line of a bounded archive run (streaming from the slot, the lease
// taken), and one wal-fetch of a 16 MB segment without prefetch, from the
// file repository and from MinIO: process start, repository open, download,
// checksum and write. Each is the median of runs.
func (e *env) coldStartBench() error {
	ctx, env, work, walship, fileRepo, s3Repo, conn := e.ctx, e.vars, e.work, e.walship, e.fileRepo, e.s3Repo, e.pg.Conn
	fi, err := os.Stat(walship)
	if err != nil {
		return err
	}
	fmt.Printf("\ncold start (median of %d runs)\n", coldRuns)
	fmt.Printf("%-52s %10s\n", "binary size", fmt.Sprintf("%.1f MiB", float64(fi.Size())/mib))
	version, err := medianOf(func() (time.Duration, error) {
		start := time.Now()
		_, err := benchenv.Capture(ctx, env, walship, "--version")
		return time.Since(start), err
	})
	if err != nil {
		return err
	}
	fmt.Printf("%-52s %7.1f ms\n", "walship --version", ms(version))
	for _, r := range []struct{ name, repo, slot string }{
		{"archive: first \"streaming\" log line, file", "file://" + fileRepo, "walship_file"},
		{"archive: first \"streaming\" log line, MinIO (HTTPS)", s3Repo, "walship_s3"},
	} {
		d, err := medianOf(func() (time.Duration, error) {
			return untilLogLine(ctx, env, "msg=streaming", walship, "--repo", r.repo, "archive", "--pg", conn, "--slot", r.slot, "--until-caught-up")
		})
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		fmt.Printf("%-52s %7.1f ms\n", r.name, ms(d))
	}
	seg := middleSegment(filepath.Join(fileRepo, "wal"))
	if seg == "" {
		return fmt.Errorf("no complete segment in %s", fileRepo)
	}
	dest := filepath.Join(work, "coldstart-seg")
	for _, r := range []struct{ name, repo string }{{"wal-fetch of one 16 MB segment, file", "file://" + fileRepo}, {"wal-fetch of one 16 MB segment, MinIO (HTTPS)", s3Repo}} {
		d, err := medianOf(func() (time.Duration, error) {
			_ = os.Remove(dest)
			start := time.Now()
			_, err := benchenv.Capture(ctx, env, walship, "--repo", r.repo, "--log-level", "warn", "wal-fetch", "--prefetch", "0", seg, dest)
			return time.Since(start), err
		})
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		fmt.Printf("%-52s %7.1f ms\n", r.name, ms(d))
	}
	_ = os.Remove(dest)
	return nil
}

const coldRuns = 7

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func medianOf(f func() (time.Duration, error)) (time.Duration, error) {
	var ds []time.Duration
	for range coldRuns {
		d, err := f()
		if err != nil {
			return 0, err
		}
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds[len(ds)/2], nil
}

// untilLogLine runs args and returns how long it took to log a line holding
// marker; the run then goes on to its end.
func untilLogLine(ctx context.Context, env []string, marker string, args ...string) (time.Duration, error) {
	cmd := benchenv.Command(ctx, env, args)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var took time.Duration
	var lines []string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if took == 0 && strings.Contains(sc.Text(), marker) {
			took = time.Since(start)
		}
	}
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("%w\n%s", err, strings.Join(lines, "\n"))
	}
	if took == 0 {
		return 0, fmt.Errorf("no %q in the log:\n%s", marker, strings.Join(lines, "\n"))
	}
	return took, nil
}

// middleSegment names the middle one of the complete segments stored under
// dir: a full one, unlike the last, which a switch may have cut short.
func middleSegment(dir string) string {
	var names []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if n := d.Name(); err == nil && !d.IsDir() && len(n) == 24 && strings.Trim(n, "0123456789ABCDEF") == "" && !strings.Contains(path, ".pieces") {
			names = append(names, n)
		}
		return nil
	})
	if len(names) == 0 {
		return ""
	}
	slices.Sort(names)
	return names[len(names)/2]
}
