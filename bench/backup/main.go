// Command backup measures a full base backup of one PostgreSQL 15 database
// taken by walship (to a file repository and to MinIO over HTTPS),
// pg_basebackup, pgBackRest (to a posix repository and to the same MinIO)
// and barman-cloud-backup (to the same MinIO), one after the other in one
// run, and prints for each the wall and CPU seconds, peak RSS, the bytes it
// stored and walship's wall time as a ratio to each peer's. Then it
// restores each tool's newest backup the same way (see restoreBench), and
// times restore_command per segment: walship wal-fetch with and without
// prefetch against pgbackrest archive-get and barman-cloud-wal-restore (see
// walFetchBench).
//
//	go run ./bench/backup [-scale 100] [-walship bin/walship] [-rounds 3]
//
// It needs root (it runs PostgreSQL 15, pgBackRest and barman-cloud-backup
// as the postgres user), Debian's PostgreSQL 15, the MinIO that make
// services builds and walship built by make build; it installs Debian's
// pgbackrest, zstd and barman-cli-cloud (with python3-boto3) when missing.
// MinIO speaks HTTPS only, with a certificate from a CA made for the run:
// walship trusts it through SSL_CERT_FILE and AWS_CA_BUNDLE, boto3 through
// AWS_CA_BUNDLE, pgBackRest through repo1-storage-ca-file.
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
//   - pgbackrest --type=full backup: posix repository and S3 repository,
//     compress-type=zst, process-max=2, start-fast=y, archive-check=n (no
//     WAL either).
//   - barman-cloud-backup --immediate-checkpoint to MinIO, compressed with
//     -barman-compression (gzip by default: Debian 12's barman 3.4 offers
//     gzip, bzip2 and snappy, no zstd, and its snappy fails, since Debian's
//     python3-snappy 0.5.3 breaks on Python 3.11), 2 upload jobs (its
//     default); it reads the data directory itself, as pgBackRest does, and
//     stores no WAL.
//   - a floor for reference: pg_basebackup -Ft -X none -D - into /dev/null,
//     the bare BASE_BACKUP stream with nothing compressed or stored.
//
// Columns: wall seconds; CPU seconds (user+sys) of the tool's process and
// the children it waited for, from rusage; the CPU PostgreSQL spent in the
// same time (walsenders, backends, checkpointer: every postgres process,
// from /proc; it is not part of the tool's CPU) and, for the MinIO runs,
// MinIO's; peak RSS of the largest process (rusage) and the peak sum over
// the tool's process tree (sampled every 20 ms: pgBackRest runs a process
// per process-max, barman an uploader per job); stored bytes (file sizes
// summed, or object sizes in the bucket) that the run added. Each tool runs
// -rounds times, in a rotated order each round (barman-cloud-backup only in
// the first -barman-backup-rounds: its gzip, level 9 in one Python
// process, takes minutes at scale 100), and the summary is the median of
// each column.
//
// Everything it starts is stopped, and its temporary directories removed,
// on failure and on SIGINT or SIGTERM too.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/walship/walship/bench/internal/benchenv"
	"github.com/walship/walship/internal/miniotest"
)

const (
	pgBin = benchenv.PgBin
	mib   = benchenv.MiB
)

// options are the command line's.
type options struct {
	scale, rounds, segments      int
	barmanRounds, barmanSegments int
	walship, compression         string
}

func main() {
	var o options
	flag.IntVar(&o.scale, "scale", 100, "pgbench scale of the database backed up (100 is about 1.5 GB)")
	flag.StringVar(&o.walship, "walship", "bin/walship", "walship binary (make build)")
	flag.IntVar(&o.rounds, "rounds", 3, "backups and restores per tool, in a rotated order each round; the summary is the median")
	flag.IntVar(&o.segments, "wal-segments", 32, "16 MB segments fetched one by one in the restore_command comparison (0: skip it)")
	flag.IntVar(&o.barmanRounds, "barman-backup-rounds", 1, "rounds barman-cloud-backup takes part in (its gzip takes minutes at scale 100); 0: all")
	flag.IntVar(&o.barmanSegments, "barman-wal-segments", 8, "of those segments, how many barman-cloud-wal-archive archives and barman-cloud-wal-restore fetches (0: all)")
	flag.StringVar(&o.compression, "barman-compression", "gzip", "barman-cloud's compression: gzip, bzip2, snappy or none (Debian 12's python3-snappy fails on Python 3.11)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.compression == "none" {
		o.compression = ""
	}
	o.rounds = max(o.rounds, 1)
	start := time.Now()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "backup:", err)
		os.Exit(1)
	}
	fmt.Printf("\nbench/backup took %.0f s\n", time.Since(start).Seconds())
}

// tool is one backup under test.
type tool struct {
	name    string
	short   string // the column head in the ratios
	args    []string
	stored  func() (int64, error) // bytes its storage holds; nil: stores nothing
	minio   bool                  // it writes to MinIO, whose CPU counts
	discard bool                  // stdout to /dev/null
	rounds  int                   // it runs in this many first rounds only; 0: in every round
}

// result is one timed backup.
type result struct {
	benchenv.Usage
	pgCPU, minioCPU float64 // seconds
	stored          int64   // bytes; < 0: not applicable
}

// env is what the benchmarks share.
type env struct {
	ctx      context.Context
	vars     []string // the children's environment: MinIO's credentials and CA
	work     string
	walship  string
	pg       *benchenv.Cluster
	minio    *benchenv.MinIO
	fileRepo string // walship's file repository (a directory)
	s3Repo   string // walship's repository on MinIO (a URL)
	rest     pgBackRest
	barman   benchenv.Barman
}

// The tools of the backup comparison, by index; the ratios compare them.
const walshipFile, walshipS3, basebackup, restPosix, restS3, barman, floor = 0, 1, 2, 3, 4, 5, 6

func run(ctx context.Context, o options) error {
	scale, rounds, compression := o.scale, o.rounds, o.compression
	walship, err := filepath.Abs(o.walship)
	if err != nil {
		return err
	}
	if _, err := os.Stat(walship); err != nil {
		return fmt.Errorf("%w: build it with make build", err)
	}
	if err := benchenv.EnsurePackages(ctx, "pgbackrest", "pgbackrest"); err != nil {
		return err
	}
	if err := benchenv.EnsurePackages(ctx, "zstd", "zstd"); err != nil {
		return err
	}
	if err := benchenv.EnsureBarman(ctx, compression); err != nil {
		return err
	}
	work, err := benchenv.WorkDir(ctx, "walship-bench-backup-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// PostgreSQL 15's defaults stream WAL (wal_level replica, 10 senders
	// and slots); no checkpoint of its own comes between the tools.
	pg, err := benchenv.StartCluster(ctx, work, "max_wal_size = 16GB\ncheckpoint_timeout = 1h\n")
	if err != nil {
		return err
	}
	defer pg.Stop()

	fmt.Printf("loading: pgbench -i -s %d (synchronous_commit off for the load; fsync on)\n", scale)
	t0 := time.Now()
	load := benchenv.Command(ctx, append(os.Environ(), "PGOPTIONS=-c synchronous_commit=off"),
		[]string{pgBin + "/pgbench", "-i", "-q", "-s", strconv.Itoa(scale), "-d", pg.Conn})
	load.Stdout, load.Stderr = os.Stderr, os.Stderr
	if err := load.Run(); err != nil {
		return fmt.Errorf("pgbench -i: %w", err)
	}
	if _, err := pg.Psql(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	fmt.Printf("loaded in %.0f s\n\n", time.Since(t0).Seconds())
	out, err := pg.Psql(ctx, "SELECT pg_database_size(current_database())")
	if err != nil {
		return err
	}
	dbBytes, _ := strconv.ParseInt(out, 10, 64)
	dataBytes, err := benchenv.DirBytes(pg.Data)
	if err != nil {
		return err
	}

	mn, err := benchenv.StartMinIO(ctx, work, "bench")
	if err != nil {
		return err
	}
	defer mn.Stop()
	e := &env{ctx: ctx, vars: append(os.Environ(), mn.Env()...), work: work, walship: walship, pg: pg, minio: mn,
		fileRepo: filepath.Join(work, "walship-repo"), s3Repo: "s3://bench/pg?endpoint=" + mn.URL(),
		barman: benchenv.Barman{URL: "s3://bench/barman", Server: "bench", Endpoint: mn.URL(), Compression: compression}}
	if e.rest, err = setupPgBackRest(ctx, work, pg, mn); err != nil {
		return err
	}
	// walship: one repository per store, each with its own slot, created
	// and caught up before timing.
	for _, r := range []struct{ repo, slot string }{{"file://" + e.fileRepo, "walship_file"}, {e.s3Repo, "walship_s3"}} {
		if _, err := benchenv.Capture(ctx, e.vars, walship, "--repo", r.repo, "archive", "--pg", pg.Conn, "--slot", r.slot, "--until-caught-up"); err != nil {
			return fmt.Errorf("walship archive --until-caught-up to %s: %w", r.repo, err)
		}
	}

	bbDir := filepath.Join(work, "pg_basebackup")
	tools := []tool{
		walshipFile: {
			name:   "walship, file repository",
			args:   []string{walship, "--repo", "file://" + e.fileRepo, "backup", "--fast", "--pg", pg.Conn, "--slot", "walship_file"},
			stored: func() (int64, error) { return benchenv.DirBytes(e.fileRepo) },
		},
		walshipS3: {
			name:   "walship, MinIO (s3)",
			args:   []string{walship, "--repo", e.s3Repo, "backup", "--fast", "--pg", pg.Conn, "--slot", "walship_s3"},
			stored: func() (int64, error) { return mn.Bytes(ctx, "pg/") },
			minio:  true,
		},
		basebackup: {
			name:   "pg_basebackup -Ft client-zstd",
			short:  "pg_basebackup",
			args:   []string{pgBin + "/pg_basebackup", "-D", bbDir, "-Ft", "--compress=client-zstd", "-X", "none", "--checkpoint=fast", "-d", pg.Conn},
			stored: func() (int64, error) { return benchenv.DirBytes(bbDir) },
		},
		restPosix: {
			name:   "pgBackRest full, posix, zst, 2 procs",
			short:  "pgBackRest posix",
			args:   e.rest.posix("--type=full", "backup"),
			stored: func() (int64, error) { return benchenv.DirBytes(e.rest.posixRepo) },
		},
		restS3: {
			name:   "pgBackRest full, MinIO, zst, 2 procs",
			short:  "pgBackRest MinIO",
			args:   e.rest.s3("--type=full", "backup"),
			stored: func() (int64, error) { return mn.Bytes(ctx, "pgbackrest/") },
			minio:  true,
		},
		barman: {
			name:   "barman-cloud-backup, MinIO, " + orNone(compression),
			short:  "barman-cloud",
			args:   e.barman.Backup(pg),
			stored: func() (int64, error) { return mn.Bytes(ctx, "barman/") },
			minio:  true,
			rounds: o.barmanRounds,
		},
		floor: {
			name:    "floor: pg_basebackup -Ft -D - >/dev/null",
			args:    []string{pgBin + "/pg_basebackup", "-D", "-", "-Ft", "-X", "none", "--checkpoint=fast", "-d", pg.Conn},
			discard: true,
		},
	}

	fmt.Printf("machine: %s\n", benchenv.Machine())
	minioBin, _ := miniotest.Binary()
	for _, v := range [][]string{{walship, "--version"}, {pgBin + "/postgres", "--version"}, {"pgbackrest", "version"}, {"barman-cloud-backup", "--version"}, {minioBin, "--version"}} {
		fmt.Printf("%s: %s\n", filepath.Base(v[0]), benchenv.Version(ctx, v...))
	}
	fmt.Printf("python3-boto3: %s\n", benchenv.PackageVersion(ctx, "python3-boto3"))
	fmt.Printf("database: pg_database_size %.0f MiB, data directory %.0f MiB (pg_wal included)\n", float64(dbBytes)/mib, float64(dataBytes)/mib)
	fmt.Printf("MinIO at %s (HTTPS, a CA of this run's)\n", mn.URL())
	fmt.Printf("CPU s is the tool's own (user+sys, rusage); PostgreSQL's (the walsender's) is the PG CPU column, not in it.\n\n")

	results := make([][]result, len(tools))
	printHeader()
	for round := range rounds {
		for k := range tools {
			i := (k + round) % len(tools)
			if tools[i].rounds > 0 && round >= tools[i].rounds {
				continue
			}
			res, err := e.measure(tools[i])
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
	printRatios(tools, med, []int{walshipFile, walshipS3}, []int{basebackup, restPosix, restS3, barman})
	if err := e.restoreBench(rounds); err != nil {
		return err
	}
	if err := e.coldStartBench(); err != nil {
		return err
	}
	if o.segments > 0 {
		return e.walFetchBench(o.segments, o.barmanSegments)
	}
	return nil
}

func orNone(compression string) string {
	if compression == "" {
		return "uncompressed"
	}
	return compression
}

// pgBackRest runs pgBackRest on the stanza "bench" with one of two
// configurations: a posix repository, or an S3 repository on the run's
// MinIO.
type pgBackRest struct {
	posixConf, s3Conf string
	posixRepo         string // the posix repository's directory
}

func (p pgBackRest) posix(args ...string) []string { return p.command(p.posixConf, args) }
func (p pgBackRest) s3(args ...string) []string    { return p.command(p.s3Conf, args) }

func (p pgBackRest) command(conf string, args []string) []string {
	return benchenv.AsPostgres(append([]string{"pgbackrest", "--config=" + conf, "--stanza=bench"}, args...)...)
}

// setupPgBackRest writes the two configuration files and creates the
// stanza in both repositories, everything owned by postgres.
func setupPgBackRest(ctx context.Context, work string, pg *benchenv.Cluster, mn *benchenv.MinIO) (pgBackRest, error) {
	dir := filepath.Join(work, "pgbackrest")
	if err := benchenv.Sh(ctx, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", dir, dir+"/repo", dir+"/log", dir+"/lock"); err != nil {
		return pgBackRest{}, err
	}
	common := fmt.Sprintf(`log-path=%[1]s/log
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
`, dir, pg.Data, pg.Work)
	p := pgBackRest{posixConf: filepath.Join(dir, "posix.conf"), s3Conf: filepath.Join(dir, "s3.conf"), posixRepo: dir + "/repo"}
	posix := fmt.Sprintf("[global]\nrepo1-type=posix\nrepo1-path=%s/repo\nrepo1-retention-full=9999\n", dir)
	// localhost, not 127.0.0.1: pgBackRest checks the certificate's DNS
	// names only.
	port := mn.Endpoint()[len("127.0.0.1:"):]
	s3 := fmt.Sprintf(`[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-retention-full=9999
repo1-s3-bucket=%s
repo1-s3-endpoint=localhost
repo1-storage-port=%s
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-s3-key=%s
repo1-s3-key-secret=%s
repo1-storage-ca-file=%s
`, mn.Bucket, port, mn.AccessKey(), mn.SecretKey(), mn.CAFile)
	for _, c := range []struct{ path, text string }{{p.posixConf, posix + common}, {p.s3Conf, s3 + common}} {
		if err := os.WriteFile(c.path, []byte(c.text), 0o600); err != nil {
			return pgBackRest{}, err
		}
		if err := benchenv.Sh(ctx, "chown", "postgres", c.path); err != nil {
			return pgBackRest{}, err
		}
		if _, err := benchenv.Capture(ctx, nil, p.command(c.path, []string{"stanza-create"})...); err != nil {
			return pgBackRest{}, fmt.Errorf("pgbackrest stanza-create (%s): %w", filepath.Base(c.path), err)
		}
	}
	return p, nil
}

// measure times one backup and what it stored.
func (e *env) measure(t tool) (result, error) {
	var before int64
	if t.stored != nil {
		n, err := t.stored()
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return result{}, err
		}
		before = n
	}
	pg0, mn0 := e.pg.CPU(), e.minio.CPU()
	u, out, err := benchenv.Timed(e.ctx, e.vars, t.args, t.discard)
	if e.ctx.Err() != nil {
		return result{}, e.ctx.Err()
	}
	if err != nil {
		return result{}, fmt.Errorf("%w\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond) // let the postmaster reap the walsender
	res := result{Usage: u, pgCPU: e.pg.CPU() - pg0, stored: -1}
	if t.minio {
		res.minioCPU = e.minio.CPU() - mn0
	}
	if t.stored != nil {
		after, err := t.stored()
		if err != nil {
			return result{}, err
		}
		res.stored = after - before
	}
	return res, nil
}

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
	fmt.Printf("%-42s %7.2f %7.2f %7.2f %9s %6.1f MiB %6.1f MiB %11s\n", name, r.Wall, r.CPU, r.pgCPU, minio,
		float64(r.MaxRSS)/mib, float64(r.TreeRSS)/mib, stored)
}

// printRatios prints a table of med[row].Wall / med[col].Wall, walship's
// runs against the peers'.
func printRatios(tools []tool, med []result, rows, cols []int) {
	fmt.Printf("%-36s", "")
	for _, c := range cols {
		fmt.Printf(" %18s", tools[c].short)
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("%-36s", tools[r].name)
		for _, c := range cols {
			fmt.Printf(" %18.2f", med[r].Wall/med[c].Wall)
		}
		fmt.Println()
	}
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
		Usage: benchenv.Usage{
			Wall:    m(func(r result) float64 { return r.Wall }),
			CPU:     m(func(r result) float64 { return r.CPU }),
			MaxRSS:  int64(m(func(r result) float64 { return float64(r.MaxRSS) })),
			TreeRSS: int64(m(func(r result) float64 { return float64(r.TreeRSS) })),
		},
		pgCPU:    m(func(r result) float64 { return r.pgCPU }),
		minioCPU: m(func(r result) float64 { return r.minioCPU }),
		stored:   int64(m(func(r result) float64 { return float64(r.stored) })),
	}
}
