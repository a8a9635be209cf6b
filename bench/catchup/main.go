// Command catchup measures how fast walship ships WAL that a replication
// slot has retained, against pg_receivewal on the same WAL in the same run:
// the catch-up after an archiver outage. It prints throughput, the ratio to
// pg_receivewal and peak RSS.
//
//	go run ./bench/catchup [-scale 80] [-walship bin/walship]
//
// It needs root (it runs PostgreSQL 15 as the postgres user), Debian's
// PostgreSQL 15 and the MinIO that make services builds.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	mgo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/miniotest"
)

const pgBin = "/usr/lib/postgresql/15/bin"

func main() {
	scale := flag.Int("scale", 80, "pgbench scale of the WAL-generating load (80 is about 1.2 GiB of WAL)")
	walship := flag.String("walship", "bin/walship", "walship binary")
	flag.Parse()
	if err := run(*scale, *walship); err != nil {
		fmt.Fprintln(os.Stderr, "catchup:", err)
		os.Exit(1)
	}
}

func run(scale int, walship string) error {
	walship, err := filepath.Abs(walship)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "walship-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := sh("chown", "postgres", work); err != nil {
		return err
	}
	data := filepath.Join(work, "data")
	if err := asPostgres(pgBin+"/initdb", "-D", data, "--wal-segsize=16", "-N", "-A", "trust", "-U", "postgres"); err != nil {
		return err
	}
	conf := fmt.Sprintf(`
listen_addresses = ''
unix_socket_directories = '%s'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
max_wal_size = 16GB
checkpoint_timeout = 1h
fsync = off
synchronous_commit = off
`, work)
	if err := appendFile(filepath.Join(data, "postgresql.conf"), conf); err != nil {
		return err
	}
	if err := asPostgres(pgBin+"/pg_ctl", "-D", data, "-l", filepath.Join(work, "pg.log"), "-w", "start"); err != nil {
		return err
	}
	defer asPostgres(pgBin+"/pg_ctl", "-D", data, "-m", "immediate", "stop")
	conn := fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres", work)
	psql := func(sql string) (string, error) {
		out, err := exec.Command(pgBin+"/psql", "-d", conn, "-Atqc", sql).Output()
		return strings.TrimSpace(string(out)), err
	}
	for _, slot := range []string{"recv", "walship_file", "walship_minio", "walship_mgo"} {
		if _, err := psql(fmt.Sprintf("SELECT pg_create_physical_replication_slot('%s', true)", slot)); err != nil {
			return fmt.Errorf("create slot %s: %w", slot, err)
		}
	}
	start, _ := psql("SELECT pg_current_wal_lsn()")
	fmt.Printf("generating WAL: pgbench -i -s %d\n", scale)
	if err := sh(pgBin+"/pgbench", "-i", "-q", "-s", strconv.Itoa(scale), "-d", conn); err != nil {
		return err
	}
	if _, err := psql("CHECKPOINT"); err != nil {
		return err
	}
	end, _ := psql("SELECT pg_current_wal_flush_lsn()")
	// pg_receivewal notices --endpos only once WAL past it arrives.
	if _, err := psql("CREATE TABLE past_end (); SELECT pg_switch_wal()"); err != nil {
		return err
	}
	bytesStr, _ := psql(fmt.Sprintf("SELECT pg_wal_lsn_diff('%s', '%s')", end, start))
	total, _ := strconv.ParseFloat(bytesStr, 64)
	fmt.Printf("WAL retained by the slots: %.0f MiB (%s to %s), 16 MB segments\n\n", total/(1<<20), start, end)

	srv, err := miniotest.New()
	if err != nil {
		return err
	}
	defer srv.Stop()
	mc, err := mgo.New(srv.Endpoint, &mgo.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, "")})
	if err != nil {
		return err
	}
	if err := mc.MakeBucket(context.Background(), "bench", mgo.MakeBucketOptions{}); err != nil {
		return err
	}
	env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+srv.AccessKey, "AWS_SECRET_ACCESS_KEY="+srv.SecretKey, "AWS_REGION=us-east-1")

	runs := []struct {
		name string
		args []string
	}{
		{"pg_receivewal (local directory, fsync)", []string{pgBin + "/pg_receivewal", "-d", conn, "-S", "recv", "-D", filepath.Join(work, "recv"), "--endpos", end, "--no-loop"}},
		{"walship, zstd, file repository", []string{walship, "--repo", "file://" + filepath.Join(work, "repo"), "archive", "--pg", conn, "--slot", "walship_file", "--until-caught-up"}},
		{"walship, zstd, MinIO (s3)", []string{walship, "--repo", "s3://bench/pg?endpoint=" + srv.URL(), "archive", "--pg", conn, "--slot", "walship_minio", "--until-caught-up"}},
		{"walship, zstd, MinIO (minio-go)", []string{walship, "--repo", "minio://" + srv.Endpoint + "/bench/mgo?secure=false", "archive", "--pg", conn, "--slot", "walship_mgo", "--until-caught-up"}},
	}
	if err := os.Mkdir(filepath.Join(work, "recv"), 0o755); err != nil {
		return err
	}
	var base float64
	fmt.Printf("%-42s %9s %10s %8s %12s %13s\n", "run", "seconds", "MB/s", "ratio", "peak RSS", "of it, file")
	for i, r := range runs {
		secs, rssKB, fileKB, err := timed(env, r.args)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		rate := total / 1e6 / secs
		if i == 0 {
			base = rate
		}
		fmt.Printf("%-42s %9.2f %10.1f %8.2f %9.1f MiB %9.1f MiB\n", r.name, secs, rate, rate/base, float64(rssKB)/1024, float64(fileKB)/1024)
	}
	return nil
}

// timed runs args and returns wall seconds, peak RSS in KiB (from the
// kernel's accounting of the child) and the largest file-backed part of the
// RSS seen while sampling (the binary's own pages, not its heap).
func timed(env, args []string) (float64, int, int, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, err
	}
	done := make(chan struct{})
	fileKB := 0
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
					n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
					fileKB = max(fileKB, n)
				}
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	secs := time.Since(start).Seconds()
	if err != nil {
		return 0, 0, 0, err
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	rss := 0
	if ru != nil {
		rss = int(ru.Maxrss)
	}
	return secs, rss, fileKB, nil
}

func sh(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func asPostgres(name string, args ...string) error {
	return sh("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
