// Command backup measures a full base backup of one PostgreSQL 15 database
// taken by walship (to a file repository and to MinIO), pg_basebackup and
// pgBackRest, one after the other in one run, and prints for each the wall
// and CPU seconds, peak RSS, the bytes it stored and walship's wall time as
// a ratio to each peer's. Then it restores each tool's newest backup the
// same way (see restoreBench), and times restore_command per segment:
// walship wal-fetch with and without prefetch against pgbackrest archive-get
// (see walFetchBench).
//
//	go run ./bench/backup [-scale 100] [-walship bin/walship] [-rounds 3]
//
// It needs root (it runs PostgreSQL 15 and pgBackRest as the postgres user),
// Debian's PostgreSQL 15, the MinIO that make services builds and walship
// built by make build; it installs Debian's pgbackrest when missing.
//
// The database is pgbench -i -s SCALE (scale 100 is about 1.5 GB), loaded
// with synchronous_commit off and checkpointed; fsync stays on. The runs:
//
//   - walship backup --fast to a file repository and to MinIO (s3:// through
//     aws-sdk-go-v2). Each repository has its own slot, created and caught
//     up by one walship archive --until-caught-up before timing, so the timed
//     run also ships (compressed) the WAL its backup needs.
//   - pg_basebackup -Ft --compress=client-zstd -X none --checkpoint=fast to a
//     local directory (no WAL).
//   - pgbackrest --type=full backup: posix repository, compress-type=zst,
//     process-max=2, start-fast=y, archive-check=n (no WAL either).
//   - a floor for reference: pg_basebackup -Ft -X none -D - into /dev/null,
//     the bare BASE_BACKUP stream with nothing compressed or stored.
//
// Columns: wall seconds; CPU seconds (user+sys) of the tool's process and
// the children it waited for, from rusage; the CPU PostgreSQL spent in the
// same time (walsenders, backends, checkpointer: every postgres process,
// from /proc; it is not part of the tool's CPU) and, for the MinIO run,
// MinIO's; peak RSS of the largest process (rusage) and the peak sum over
// the tool's process tree (sampled every 20 ms: pgBackRest runs a process
// per process-max); stored bytes (file sizes summed, or object sizes in the
// bucket) that the run added. Each tool runs -rounds times, in a rotated
// order each round, and the summary is the median of each column.
//
// Everything it starts is stopped, and its temporary directories removed,
// on failure and on SIGINT or SIGTERM too.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	mgo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/miniotest"
)

const (
	pgBin  = "/usr/lib/postgresql/15/bin"
	clkTck = 100 // USER_HZ, the unit of CPU times in /proc/PID/stat
	mib    = 1 << 20
)

func main() {
	scale := flag.Int("scale", 100, "pgbench scale of the database backed up (100 is about 1.5 GB)")
	walship := flag.String("walship", "bin/walship", "walship binary (make build)")
	rounds := flag.Int("rounds", 3, "backups and restores per tool, in a rotated order each round; the summary is the median")
	segments := flag.Int("wal-segments", 32, "16 MB segments fetched one by one in the restore_command comparison (0: skip it)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *scale, *walship, max(*rounds, 1), *segments); err != nil {
		fmt.Fprintln(os.Stderr, "backup:", err)
		os.Exit(1)
	}
}

// tool is one backup under test.
type tool struct {
	name    string
	args    []string
	stored  func() (int64, error) // bytes its storage holds; nil: stores nothing
	minio   bool                  // it writes to MinIO, whose CPU counts
	discard bool                  // stdout to /dev/null
}

// result is one timed backup.
type result struct {
	wall, cpu, pgCPU, minioCPU float64 // seconds
	maxRSS, treeRSS, stored    int64   // bytes; stored < 0: not applicable
}

// The first four tools, by index; the ratios compare them.
const walshipFile, walshipS3, basebackup, pgBackRest = 0, 1, 2, 3

func run(ctx context.Context, scale int, walship string, rounds, segments int) error {
	walship, err := filepath.Abs(walship)
	if err != nil {
		return err
	}
	if _, err := os.Stat(walship); err != nil {
		return fmt.Errorf("%w: build it with make build", err)
	}
	if err := ensurePgBackRest(ctx); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "walship-bench-backup-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := sh(ctx, "chown", "postgres", work); err != nil {
		return err
	}
	data := filepath.Join(work, "data")
	if err := asPostgres(ctx, pgBin+"/initdb", "-D", data, "--wal-segsize=16", "-N", "-A", "trust", "-U", "postgres"); err != nil {
		return err
	}
	// PostgreSQL 15's defaults stream WAL (wal_level replica, 10 senders
	// and slots); no checkpoint of its own comes between the tools.
	opts := fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories=%s -c max_wal_size=16GB -c checkpoint_timeout=1h", work)
	if err := asPostgres(ctx, pgBin+"/pg_ctl", "-D", data, "-l", filepath.Join(work, "pg.log"), "-o", opts, "-w", "start"); err != nil {
		return err
	}
	// Not under ctx: it must run after an interrupt too.
	defer exec.Command("runuser", "-u", "postgres", "--", pgBin+"/pg_ctl", "-D", data, "-m", "immediate", "stop").Run()
	postmaster, err := readPid(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return err
	}
	conn := fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres", work)

	fmt.Printf("loading: pgbench -i -s %d (synchronous_commit off for the load; fsync on)\n", scale)
	t0 := time.Now()
	load := command(ctx, append(os.Environ(), "PGOPTIONS=-c synchronous_commit=off"),
		[]string{pgBin + "/pgbench", "-i", "-q", "-s", strconv.Itoa(scale), "-d", conn})
	load.Stdout, load.Stderr = os.Stderr, os.Stderr
	if err := load.Run(); err != nil {
		return fmt.Errorf("pgbench -i: %w", err)
	}
	if _, err := capture(ctx, nil, pgBin+"/psql", "-d", conn, "-Atqc", "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	fmt.Printf("loaded in %.0f s\n\n", time.Since(t0).Seconds())
	out, err := capture(ctx, nil, pgBin+"/psql", "-d", conn, "-Atqc", "SELECT pg_database_size(current_database())")
	if err != nil {
		return err
	}
	dbBytes, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	dataBytes, err := dirBytes(data)
	if err != nil {
		return err
	}

	srv, err := miniotest.New()
	if err != nil {
		return err
	}
	defer srv.Stop()
	mc, err := mgo.New(srv.Endpoint, &mgo.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, "")})
	if err != nil {
		return err
	}
	if err := mc.MakeBucket(ctx, "bench", mgo.MakeBucketOptions{}); err != nil {
		return err
	}
	minioPid := childNamed(os.Getpid(), "minio")
	env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+srv.AccessKey, "AWS_SECRET_ACCESS_KEY="+srv.SecretKey, "AWS_REGION=us-east-1")

	pgbackrest, restRepo, err := setupPgBackRest(ctx, work, data)
	if err != nil {
		return err
	}
	// walship: one repository per store, each with its own slot, created
	// and caught up before timing.
	fileRepo := filepath.Join(work, "walship-repo")
	s3Repo := "s3://bench/pg?endpoint=" + srv.URL()
	for _, r := range []struct{ repo, slot string }{{"file://" + fileRepo, "walship_file"}, {s3Repo, "walship_s3"}} {
		if _, err := capture(ctx, env, walship, "--repo", r.repo, "archive", "--pg", conn, "--slot", r.slot, "--until-caught-up"); err != nil {
			return fmt.Errorf("walship archive --until-caught-up to %s: %w", r.repo, err)
		}
	}

	bbDir := filepath.Join(work, "pg_basebackup")
	tools := []tool{
		walshipFile: {
			name:   "walship, file repository",
			args:   []string{walship, "--repo", "file://" + fileRepo, "backup", "--fast", "--pg", conn, "--slot", "walship_file"},
			stored: func() (int64, error) { return dirBytes(fileRepo) },
		},
		walshipS3: {
			name:   "walship, MinIO (s3)",
			args:   []string{walship, "--repo", s3Repo, "backup", "--fast", "--pg", conn, "--slot", "walship_s3"},
			stored: func() (int64, error) { return bucketBytes(ctx, mc, "bench", "pg/") },
			minio:  true,
		},
		basebackup: {
			name:   "pg_basebackup -Ft client-zstd",
			args:   []string{pgBin + "/pg_basebackup", "-D", bbDir, "-Ft", "--compress=client-zstd", "-X", "none", "--checkpoint=fast", "-d", conn},
			stored: func() (int64, error) { return dirBytes(bbDir) },
		},
		pgBackRest: {
			name:   "pgBackRest full, zst, process-max=2",
			args:   append(slices.Clone(pgbackrest), "--type=full", "backup"),
			stored: func() (int64, error) { return dirBytes(restRepo) },
		},
		{
			name:    "floor: pg_basebackup -Ft -D - >/dev/null",
			args:    []string{pgBin + "/pg_basebackup", "-D", "-", "-Ft", "-X", "none", "--checkpoint=fast", "-d", conn},
			discard: true,
		},
	}

	fmt.Printf("machine: %s\n", machine())
	minioBin, _ := miniotest.Binary()
	for _, v := range [][]string{{walship, "--version"}, {pgBin + "/postgres", "--version"}, {"pgbackrest", "version"}, {minioBin, "--version"}} {
		fmt.Printf("%s: %s\n", filepath.Base(v[0]), version(ctx, v...))
	}
	fmt.Printf("database: pg_database_size %.0f MiB, data directory %.0f MiB (pg_wal included)\n", float64(dbBytes)/mib, float64(dataBytes)/mib)
	fmt.Printf("CPU s is the tool's own (user+sys, rusage); PostgreSQL's (the walsender's) is the PG CPU column, not in it.\n\n")

	results := make([][]result, len(tools))
	printHeader()
	for round := range rounds {
		for k := range tools {
			i := (k + round) % len(tools)
			res, err := measure(ctx, env, tools[i], postmaster, minioPid)
			if err != nil {
				return fmt.Errorf("%s: %w", tools[i].name, err)
			}
			results[i] = append(results[i], res)
			printRow(tools[i].name, res)
			if i == basebackup {
				_ = os.RemoveAll(bbDir) // measured; the next round starts empty
			}
		}
	}
	med := medians(tools, results)
	fmt.Printf("\nwalship's wall time / the peer's (below 1: walship is faster)\n")
	fmt.Printf("%-26s %16s %16s\n", "", "pg_basebackup", "pgBackRest")
	for _, i := range []int{walshipFile, walshipS3} {
		fmt.Printf("%-26s %16.2f %16.2f\n", tools[i].name, med[i].wall/med[basebackup].wall, med[i].wall/med[pgBackRest].wall)
	}
	if err := restoreBench(ctx, env, work, walship, fileRepo, s3Repo, pgbackrest, conn, rounds); err != nil {
		return err
	}
	if err := coldStartBench(ctx, env, work, walship, fileRepo, s3Repo, conn); err != nil {
		return err
	}
	if segments > 0 {
		return walFetchBench(ctx, env, work, data, walship, fileRepo, pgbackrest, conn, segments)
	}
	return nil
}

// setupPgBackRest writes a config file with the stanza "bench" and creates
// the stanza, everything owned by postgres. It returns the command prefix
// that runs pgBackRest on the stanza, and the repository's directory.
func setupPgBackRest(ctx context.Context, work, data string) ([]string, string, error) {
	dir := filepath.Join(work, "pgbackrest")
	if err := sh(ctx, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", dir, dir+"/repo", dir+"/log", dir+"/lock"); err != nil {
		return nil, "", err
	}
	conf := filepath.Join(dir, "pgbackrest.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `[global]
repo1-type=posix
repo1-path=%[1]s/repo
repo1-retention-full=9999
log-path=%[1]s/log
lock-path=%[1]s/lock
log-level-console=warn
log-level-file=info
compress-type=zst
process-max=2
start-fast=y
archive-check=n

[bench]
pg1-path=%[2]s
pg1-socket-path=%[3]s
pg1-port=5432
`, dir, data, work), 0o644); err != nil {
		return nil, "", err
	}
	cmd := []string{"runuser", "-u", "postgres", "--", "pgbackrest", "--config=" + conf, "--stanza=bench"}
	if _, err := capture(ctx, nil, append(slices.Clone(cmd), "stanza-create")...); err != nil {
		return nil, "", fmt.Errorf("pgbackrest stanza-create: %w", err)
	}
	return cmd, dir + "/repo", nil
}

// measure times one backup and what it stored.
func measure(ctx context.Context, env []string, t tool, postmaster, minioPid int) (result, error) {
	var before int64
	if t.stored != nil {
		n, err := t.stored()
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return result{}, err
		}
		before = n
	}
	pg0, mn0 := pgCPU(postmaster), procCPU(minioPid, false)
	res, out, err := timed(ctx, env, t.args, t.discard)
	if ctx.Err() != nil {
		return result{}, ctx.Err()
	}
	if err != nil {
		return result{}, fmt.Errorf("%w\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond) // let the postmaster reap the walsender
	res.pgCPU = pgCPU(postmaster) - pg0
	if t.minio {
		res.minioCPU = procCPU(minioPid, false) - mn0
	}
	res.stored = -1
	if t.stored != nil {
		after, err := t.stored()
		if err != nil {
			return result{}, err
		}
		res.stored = after - before
	}
	return res, nil
}

// timed runs args in a process group of its own, sampling the summed RSS of
// its process tree, and returns wall and CPU seconds and peak RSS, with the
// combined output for when it fails.
func timed(ctx context.Context, env, args []string, discard bool) (result, []byte, error) {
	cmd := command(ctx, env, args)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if discard {
		cmd.Stdout = nil // the null device
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, nil, err
	}
	done := make(chan struct{})
	sampled := make(chan int64, 1)
	go func() {
		var peak int64
		defer func() { sampled <- peak }()
		for {
			peak = max(peak, treeRSS(cmd.Process.Pid))
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	res := result{wall: time.Since(start).Seconds()}
	close(done)
	res.treeRSS = <-sampled
	if err != nil {
		return result{}, out.Bytes(), err
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		// wait4 reports the child and the descendants it waited for;
		// ru_maxrss is the largest of them, in KiB.
		res.cpu = seconds(ru.Utime) + seconds(ru.Stime)
		res.maxRSS = ru.Maxrss * 1024
	}
	res.treeRSS = max(res.treeRSS, res.maxRSS)
	return res, out.Bytes(), nil
}

func seconds(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func printHeader() {
	fmt.Printf("%-42s %7s %7s %7s %9s %10s %10s %11s\n", "run", "wall s", "CPU s", "PG CPU", "MinIO CPU", "peak RSS", "tree RSS", "stored")
}

func printRow(name string, r result) {
	minio, stored := "-", "-"
	if r.minioCPU > 0 {
		minio = fmt.Sprintf("%.2f", r.minioCPU)
	}
	if r.stored >= 0 {
		stored = fmt.Sprintf("%.1f MiB", float64(r.stored)/mib)
	}
	fmt.Printf("%-42s %7.2f %7.2f %7.2f %9s %6.1f MiB %6.1f MiB %11s\n", name, r.wall, r.cpu, r.pgCPU, minio,
		float64(r.maxRSS)/mib, float64(r.treeRSS)/mib, stored)
}

// medians is each tool's median result, printed when there was more than
// one round.
func medians(tools []tool, results [][]result) []result {
	med := make([]result, len(tools))
	for i := range tools {
		med[i] = median(results[i])
	}
	if len(results) > 0 && len(results[0]) > 1 {
		fmt.Printf("\nmedian of %d rounds\n", len(results[0]))
		printHeader()
		for i, t := range tools {
			printRow(t.name, med[i])
		}
	}
	return med
}

// median is the median of each column on its own.
func median(rs []result) result {
	m := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return result{
		wall:     m(func(r result) float64 { return r.wall }),
		cpu:      m(func(r result) float64 { return r.cpu }),
		pgCPU:    m(func(r result) float64 { return r.pgCPU }),
		minioCPU: m(func(r result) float64 { return r.minioCPU }),
		maxRSS:   int64(m(func(r result) float64 { return float64(r.maxRSS) })),
		treeRSS:  int64(m(func(r result) float64 { return float64(r.treeRSS) })),
		stored:   int64(m(func(r result) float64 { return float64(r.stored) })),
	}
}

// ensurePgBackRest installs Debian's pgbackrest when it is not on PATH.
func ensurePgBackRest(ctx context.Context) error {
	return ensurePackage(ctx, "pgbackrest", "pgbackrest")
}

// dirBytes sums the sizes of the regular files under dir.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}

// bucketBytes sums the sizes of the objects under prefix.
func bucketBytes(ctx context.Context, mc *mgo.Client, bucket, prefix string) (int64, error) {
	var n int64
	for o := range mc.ListObjects(ctx, bucket, mgo.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return 0, fmt.Errorf("list %s/%s: %w", bucket, prefix, o.Err)
		}
		n += o.Size
	}
	return n, nil
}

func machine() string {
	ram := float64(kB(procValue("/proc/meminfo", "MemTotal"))) / (1 << 30)
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs (%s), %.1f GiB RAM, Linux %s, %s", runtime.NumCPU(), procValue("/proc/cpuinfo", "model name"),
		ram, strings.TrimSpace(string(kernel)), runtime.Version())
}

func version(ctx context.Context, args ...string) string {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// command builds a child in a process group of its own, killed whole when
// ctx ends (pgBackRest's workers included).
func command(ctx context.Context, env, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// capture runs args and returns their combined output, also in the error
// when they fail.
func capture(ctx context.Context, env []string, args ...string) ([]byte, error) {
	out, err := command(ctx, env, args).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%w\n%s", err, out)
	}
	return out, nil
}

func sh(ctx context.Context, name string, args ...string) error {
	cmd := command(ctx, nil, append([]string{name}, args...))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func asPostgres(ctx context.Context, name string, args ...string) error {
	return sh(ctx, "runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
}
