// Command catchup measures how fast walship ships WAL that a replication
// slot has retained, against pg_receivewal and barman-cloud-wal-archive on
// the same WAL in the same run: the catch-up after an archiver outage. It
// prints throughput, walship's throughput as a ratio to each peer's and
// peak RSS.
//
//	go run ./bench/catchup [-scale 80] [-walship bin/walship] [-barman-compression gzip]
//
// pg_receivewal and walship stream the retained WAL from a slot of their
// own, one after the other. barman-cloud-wal-archive is an archive_command:
// it runs once per 16 MB segment file, one after the other as PostgreSQL's
// archiver runs it, over the same segments (kept in pg_wal by a slot no one
// reads); its time and CPU are the sums over the calls, its memory the
// largest call's.
//
// It needs root (it runs PostgreSQL 15 as the postgres user), Debian's
// PostgreSQL 15 and the MinIO that make services builds; it installs
// barman-cli-cloud with python3-boto3 when missing. MinIO speaks HTTPS only,
// with a certificate from a CA made for the run (see benchenv.StartMinIO).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/walship/walship/bench/internal/benchenv"
)

const pgBin = benchenv.PgBin

func main() {
	scale := flag.Int("scale", 80, "pgbench scale of the WAL-generating load (80 is about 1.2 GiB of WAL)")
	walship := flag.String("walship", "bin/walship", "walship binary")
	compression := flag.String("barman-compression", "gzip", "barman-cloud-wal-archive's compression: gzip, bzip2, snappy or none (Debian 12's python3-snappy fails on Python 3.11)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *compression == "none" {
		*compression = ""
	}
	start := time.Now()
	if err := run(ctx, *scale, *walship, *compression); err != nil {
		fmt.Fprintln(os.Stderr, "catchup:", err)
		os.Exit(1)
	}
	fmt.Printf("\nbench/catchup took %.0f s\n", time.Since(start).Seconds())
}

func run(ctx context.Context, scale int, walship, compression string) error {
	walship, err := filepath.Abs(walship)
	if err != nil {
		return err
	}
	if err := benchenv.EnsureBarman(ctx, compression); err != nil {
		return err
	}
	work, err := benchenv.WorkDir(ctx, "walship-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	pg, err := benchenv.StartCluster(ctx, work, `wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
max_wal_size = 16GB
checkpoint_timeout = 1h
fsync = off
synchronous_commit = off
`)
	if err != nil {
		return err
	}
	defer pg.Stop()
	// barman_keep holds the WAL for barman-cloud-wal-archive, which reads
	// pg_wal's files; no one reads from it.
	for _, slot := range []string{"recv", "walship_file", "walship_minio", "walship_mgo", "barman_keep"} {
		if _, err := pg.Psql(ctx, fmt.Sprintf("SELECT pg_create_physical_replication_slot('%s', true)", slot)); err != nil {
			return fmt.Errorf("create slot %s: %w", slot, err)
		}
	}
	start, err := pg.Psql(ctx, "SELECT pg_current_wal_lsn()")
	if err != nil {
		return err
	}
	fmt.Printf("generating WAL: pgbench -i -s %d\n", scale)
	if err := benchenv.Sh(ctx, pgBin+"/pgbench", "-i", "-q", "-s", strconv.Itoa(scale), "-d", pg.Conn); err != nil {
		return err
	}
	if _, err := pg.Psql(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	end, err := pg.Psql(ctx, "SELECT pg_current_wal_flush_lsn()")
	if err != nil {
		return err
	}
	// pg_receivewal notices --endpos only once WAL past it arrives.
	if _, err := pg.Psql(ctx, "CREATE TABLE past_end (); SELECT pg_switch_wal()"); err != nil {
		return err
	}
	bytesStr, err := pg.Psql(ctx, fmt.Sprintf("SELECT pg_wal_lsn_diff('%s', '%s')", end, start))
	if err != nil {
		return err
	}
	total, _ := strconv.ParseFloat(bytesStr, 64)
	segments, err := segmentFiles(ctx, pg, start, end)
	if err != nil {
		return err
	}
	fmt.Printf("WAL retained by the slots: %.0f MiB (%s to %s), 16 MB segments (%d files)\n", total/(1<<20), start, end, len(segments))

	mn, err := benchenv.StartMinIO(ctx, work, "bench")
	if err != nil {
		return err
	}
	defer mn.Stop()
	fmt.Printf("machine: %s\n", benchenv.Machine())
	fmt.Printf("pg_receivewal: %s; barman-cli-cloud %s, python3-boto3 %s; MinIO at %s (HTTPS)\n\n", benchenv.Version(ctx, pgBin+"/pg_receivewal", "--version"),
		benchenv.PackageVersion(ctx, "barman-cli-cloud"), benchenv.PackageVersion(ctx, "python3-boto3"), mn.URL())
	env := append(os.Environ(), mn.Env()...)
	barman := benchenv.Barman{URL: "s3://bench/barman", Server: "bench", Endpoint: mn.URL(), Compression: compression}

	const recv, barmanRun = 0, 4
	runs := []struct {
		name string
		args []string
	}{
		recv:      {"pg_receivewal (local directory, fsync)", []string{pgBin + "/pg_receivewal", "-d", pg.Conn, "-S", "recv", "-D", filepath.Join(work, "recv"), "--endpos", end, "--no-loop"}},
		1:         {"walship, zstd, file repository", []string{walship, "--repo", "file://" + filepath.Join(work, "repo"), "archive", "--pg", pg.Conn, "--slot", "walship_file", "--until-caught-up"}},
		2:         {"walship, zstd, MinIO (s3)", []string{walship, "--repo", "s3://bench/pg?endpoint=" + mn.URL(), "archive", "--pg", pg.Conn, "--slot", "walship_minio", "--until-caught-up"}},
		3:         {"walship, zstd, MinIO (minio-go)", []string{walship, "--repo", "minio://" + mn.Endpoint() + "/bench/mgo?secure=true", "archive", "--pg", pg.Conn, "--slot", "walship_mgo", "--until-caught-up"}},
		barmanRun: {"barman-cloud-wal-archive, MinIO, " + orNone(compression), nil},
	}
	if err := os.Mkdir(filepath.Join(work, "recv"), 0o755); err != nil {
		return err
	}
	rates := make([]float64, len(runs))
	usages := make([]benchenv.Usage, len(runs))
	for i, r := range runs {
		var u benchenv.Usage
		if i == barmanRun {
			for _, seg := range segments {
				v, out, err := benchenv.Timed(ctx, env, barman.WALArchive(seg), false)
				if err != nil {
					return fmt.Errorf("%s %s: %w\n%s", r.name, filepath.Base(seg), err, out)
				}
				u = u.Add(v)
			}
		} else {
			v, out, err := benchenv.Timed(ctx, env, r.args, false)
			if err != nil {
				return fmt.Errorf("%s: %w\n%s", r.name, err, out)
			}
			u = v
		}
		usages[i], rates[i] = u, total/1e6/u.Wall
	}
	fmt.Printf("%-44s %8s %8s %8s %12s %12s %12s\n", "run", "seconds", "CPU s", "MB/s", "peak RSS", "of it, file", "stored")
	stored := []func() (int64, error){
		func() (int64, error) { return benchenv.DirBytes(filepath.Join(work, "recv")) },
		func() (int64, error) { return benchenv.DirBytes(filepath.Join(work, "repo")) },
		func() (int64, error) { return mn.Bytes(ctx, "pg/") },
		func() (int64, error) { return mn.Bytes(ctx, "mgo/") },
		func() (int64, error) { return mn.Bytes(ctx, "barman/") },
	}
	for i, r := range runs {
		n, err := stored[i]()
		if err != nil {
			return err
		}
		u := usages[i]
		fmt.Printf("%-44s %8.2f %8.2f %8.1f %8.1f MiB %8.1f MiB %8.1f MiB\n", r.name, u.Wall, u.CPU, rates[i],
			float64(u.MaxRSS)/benchenv.MiB, float64(u.FileRSS)/benchenv.MiB, float64(n)/benchenv.MiB)
	}
	fmt.Printf("\nwalship's throughput / the peer's (above 1: walship is faster)\n")
	fmt.Printf("%-44s %16s %16s\n", "", "pg_receivewal", "barman-cloud")
	for i := 1; i < barmanRun; i++ {
		fmt.Printf("%-44s %16.2f %16.2f\n", runs[i].name, rates[i]/rates[recv], rates[i]/rates[barmanRun])
	}
	return nil
}

// segmentFiles lists the paths of the segment files in pg_wal that hold WAL
// from start to end, in order.
func segmentFiles(ctx context.Context, pg *benchenv.Cluster, start, end string) ([]string, error) {
	names, err := pg.Psql(ctx, fmt.Sprintf("SELECT pg_walfile_name('%s') || ' ' || pg_walfile_name('%s')", start, end))
	if err != nil {
		return nil, err
	}
	var first, last string
	if _, err := fmt.Sscan(names, &first, &last); err != nil {
		return nil, fmt.Errorf("segment names %q: %w", names, err)
	}
	entries, err := os.ReadDir(filepath.Join(pg.Data, "pg_wal"))
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, e := range entries {
		if n := e.Name(); len(n) == 24 && n >= first && n <= last {
			paths = append(paths, filepath.Join(pg.Data, "pg_wal", n))
		}
	}
	sort.Strings(paths)
	if len(paths) == 0 || filepath.Base(paths[0]) != first || filepath.Base(paths[len(paths)-1]) != last {
		return nil, fmt.Errorf("pg_wal does not hold every segment from %s to %s", first, last)
	}
	return paths, nil
}

func orNone(compression string) string {
	if compression == "" {
		return "uncompressed"
	}
	return compression
}
