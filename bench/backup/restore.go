package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/bench/internal/benchenv"
	"github.com/walship/walship/restore"
)

// restoreBench restores the newest backup of each tool into an empty
// directory, rounds times in a rotated order, and prints the times and
// walship's ratios:
//
//   - walship restore from the file repository and from MinIO (latest
//     target: planning, download, zstd, tar extraction, fsync, recovery
//     settings);
//   - pgbackrest restore from the posix repository and from MinIO
//     (process-max=2, zst);
//   - barman-cloud-restore from MinIO, then sync (it writes without fsync);
//   - zstd -dc base.tar.zst | tar -x of pg_basebackup's output, then sync:
//     the bare unpacking of a compressed tar, for reference;
//   - walship restore from the file repository one archive part at a time,
//     which shows what extracting the parts in parallel gains.
//
// Nothing is started on the restored directories: this is the time to
// recreate the data directory; WAL replay is PostgreSQL's either way.
func (e *env) restoreBench(rounds int) error {
	ctx := e.ctx
	bbKeep := filepath.Join(e.work, "pg_basebackup-kept")
	if _, err := benchenv.Capture(ctx, nil, pgBin+"/pg_basebackup", "-D", bbKeep, "-Ft", "--compress=client-zstd", "-X", "none", "--checkpoint=fast", "-d", e.pg.Conn); err != nil {
		return fmt.Errorf("pg_basebackup for the unpacking run: %w", err)
	}
	barmanID, err := e.barman.Newest(ctx, e.vars)
	if err != nil {
		return err
	}
	target := filepath.Join(e.work, "restored")
	const walshipFile, walshipS3, restPosix, restS3, barman, untar, walshipSerial = 0, 1, 2, 3, 4, 5, 6
	tools := []tool{
		walshipFile:   {name: "walship restore, file repository", args: []string{e.walship, "--repo", "file://" + e.fileRepo, "restore", "--target-dir", target}},
		walshipS3:     {name: "walship restore, MinIO (s3)", args: []string{e.walship, "--repo", e.s3Repo, "restore", "--target-dir", target}, minio: true},
		restPosix:     {name: "pgbackrest restore, posix, 2 procs", short: "pgBackRest posix", args: e.rest.posix("--pg1-path="+target, "restore")},
		restS3:        {name: "pgbackrest restore, MinIO, 2 procs", short: "pgBackRest MinIO", args: e.rest.s3("--pg1-path="+target, "restore"), minio: true},
		barman:        {name: "barman-cloud-restore, MinIO, then sync", short: "barman-cloud", args: []string{"sh", "-c", shellJoin(e.barman.Restore(barmanID, target)) + " && sync"}, minio: true},
		untar:         {name: "zstd -dc | tar -x of pg_basebackup, sync", short: "zstd | tar", args: []string{"sh", "-c", fmt.Sprintf("zstd -dcq %s/base.tar.zst | tar -xf - -C %s && sync", bbKeep, target)}},
		walshipSerial: {name: "walship restore --parallel 1, file", args: []string{e.walship, "--repo", "file://" + e.fileRepo, "restore", "--parallel", "1", "--target-dir", target}},
	}
	fmt.Printf("\nrestore of the newest backup into an empty directory (barman's: %s)\n", barmanID)
	printHeader()
	results := make([][]result, len(tools))
	for round := range rounds {
		for k := range tools {
			i := (k + round) % len(tools)
			if err := os.RemoveAll(target); err != nil {
				return err
			}
			if i == untar || i == restPosix || i == restS3 {
				// pgBackRest runs as postgres; tar needs the directory.
				if err := benchenv.Sh(ctx, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", target); err != nil {
					return err
				}
			}
			res, err := e.measure(tools[i])
			if err != nil {
				return fmt.Errorf("%s: %w", tools[i].name, err)
			}
			results[i] = append(results[i], res)
			printRow(tools[i].name, res)
		}
	}
	_ = os.RemoveAll(target)
	med := medians(tools, results)
	fmt.Printf("\nwalship's restore time / the peer's (below 1: walship is faster)\n")
	printRatios(tools, med, []int{walshipFile, walshipS3, walshipSerial}, []int{restPosix, restS3, barman, untar})
	return nil
}

// shellJoin quotes args for sh -c.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// walFetchBench generates segments of WAL, archives them with walship (to
// both repositories), pgBackRest (archive-push to both) and
// barman-cloud-wal-archive, and times restore_command for each segment in
// order, as recovery calls it, with a pause between calls standing for
// replay: the restore_command walship restore writes (a spooled segment is
// renamed by the shell; otherwise wal-fetch, whose keeper prefetches),
// wal-fetch without prefetch, pgbackrest archive-get and
// barman-cloud-wal-restore (on the first barmanSegments segments only:
// each of its calls starts Python and boto3, seconds per segment, and its
// gzip archiving takes seconds more). It prints the mean and 95th
// percentile per segment, and the peak RSS of the calls (rusage; not of
// walship's keeper, which runs on its own after the call that starts it).
func (e *env) walFetchBench(segments, barmanSegments int) error {
	ctx, pg := e.ctx, e.pg
	first, err := pg.Psql(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	if err != nil {
		return err
	}
	// About segments × 16 MB of WAL.
	rows := segments * 16 << 20 / 100
	if _, err := pg.Psql(ctx, fmt.Sprintf("CREATE TABLE walgen AS SELECT g, md5(g::text) AS v FROM generate_series(1, %d) g", rows)); err != nil {
		return err
	}
	last, err := pg.Psql(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	if err != nil {
		return err
	}
	if _, err := pg.Psql(ctx, "SELECT pg_switch_wal()"); err != nil {
		return err
	}
	// Every complete segment from first to before last, all archived.
	entries, err := os.ReadDir(filepath.Join(pg.Data, "pg_wal"))
	if err != nil {
		return err
	}
	var names []string
	for _, d := range entries {
		n := d.Name()
		if len(n) == 24 && n >= first && n < last {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	if len(names) > segments {
		names = names[:segments]
	}
	// Untimed: each peer archives the segments in order, the three peers
	// at once.
	barmanNames := names
	if barmanSegments > 0 && len(names) > barmanSegments {
		barmanNames = names[:barmanSegments]
	}
	pushes := []struct {
		names []string
		cmd   func(path string) []string
	}{
		{names, func(path string) []string { return e.rest.posix("archive-push", path) }},
		{names, func(path string) []string { return e.rest.s3("archive-push", path) }},
		{barmanNames, e.barman.WALArchive},
	}
	errs := make(chan error, len(pushes))
	for _, push := range pushes {
		go func() {
			for _, n := range push.names {
				if _, err := benchenv.Capture(ctx, e.vars, push.cmd(filepath.Join(pg.Data, "pg_wal", n))...); err != nil {
					errs <- fmt.Errorf("archive %s: %w", n, err)
					return
				}
			}
			errs <- nil
		}()
	}
	var pushErr error
	for range pushes {
		if err := <-errs; pushErr == nil {
			pushErr = err
		}
	}
	if pushErr != nil {
		return pushErr
	}
	for _, r := range []struct{ repo, slot string }{{"file://" + e.fileRepo, "walship_file"}, {e.s3Repo, "walship_s3"}} {
		if _, err := benchenv.Capture(ctx, e.vars, e.walship, "--repo", r.repo, "archive", "--pg", pg.Conn, "--slot", r.slot, "--until-caught-up"); err != nil {
			return err
		}
	}

	// A directory that looks like a data directory, for restore_command's
	// working directory (walship puts its spool there).
	fake := filepath.Join(e.work, "fake-data")
	if err := benchenv.Sh(ctx, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", fake, fake+"/pg_wal"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(fake, "PG_VERSION"), []byte("15\n"), 0o644); err != nil {
		return err
	}
	const replay = 50 * time.Millisecond
	restoreCommand := func(repo string) func(string) []string {
		return func(n string) []string {
			// What walship restore writes, as PostgreSQL runs it.
			cmd := restore.RestoreCommand(e.walship, repo, "")
			cmd = strings.NewReplacer("%f", n, "%p", "pg_wal/RECOVERYXLOG").Replace(cmd)
			return []string{"sh", "-c", cmd}
		}
	}
	walFetch := func(repo string) func(string) []string {
		return func(n string) []string {
			return []string{e.walship, "--repo", repo, "--log-level", "warn", "wal-fetch", "--prefetch", "0", n, "pg_wal/RECOVERYXLOG"}
		}
	}
	const walshipFile, walshipFile0, restPosix, walshipS3, walshipS30, restS3, barman = 0, 1, 2, 3, 4, 5, 6
	runs := []struct {
		name, short string
		cmd         func(name string) []string
		names       []string
	}{
		walshipFile:  {"walship restore_command (prefetch 8), file", "", restoreCommand("file://" + e.fileRepo), names},
		walshipFile0: {"walship wal-fetch --prefetch 0, file", "", walFetch("file://" + e.fileRepo), names},
		restPosix: {"pgbackrest archive-get, posix", "pgBackRest posix", func(n string) []string {
			return e.rest.posix("archive-get", n, filepath.Join(fake, "pg_wal/RECOVERYXLOG"))
		}, names},
		walshipS3:  {"walship restore_command (prefetch 8), MinIO", "", restoreCommand(e.s3Repo), names},
		walshipS30: {"walship wal-fetch --prefetch 0, MinIO", "", walFetch(e.s3Repo), names},
		restS3: {"pgbackrest archive-get, MinIO", "pgBackRest MinIO", func(n string) []string {
			return e.rest.s3("archive-get", n, filepath.Join(fake, "pg_wal/RECOVERYXLOG"))
		}, names},
		barman: {"barman-cloud-wal-restore, MinIO", "barman-cloud", func(n string) []string {
			return e.barman.WALRestore(n, "pg_wal/RECOVERYXLOG")
		}, barmanNames},
	}
	fmt.Printf("\nrestore_command per segment: %d segments of 16 MB in order, %v of replay between calls\n", len(names), replay)
	fmt.Printf("%-44s %8s %10s %10s %10s %10s\n", "run", "segments", "mean ms", "p95 ms", "total s", "peak RSS")
	means := make([]float64, len(runs))
	for i, r := range runs {
		_ = os.RemoveAll(filepath.Join(fake, "walship_prefetch"))
		var lat []float64
		var peak benchenv.Usage
		for _, n := range r.names {
			_ = os.Remove(filepath.Join(fake, "pg_wal/RECOVERYXLOG")) // as PostgreSQL does after each
			cmd := benchenv.Command(ctx, e.vars, r.cmd(n))
			cmd.Dir = fake
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s: %w\n%s", r.name, n, err, out)
			}
			lat = append(lat, float64(time.Since(start).Microseconds())/1000)
			peak = peak.Add(benchenv.Usage{MaxRSS: benchenv.MaxRSS(cmd.ProcessState)})
			time.Sleep(replay)
		}
		total := 0.0
		for _, v := range lat {
			total += v
		}
		sorted := slices.Clone(lat)
		slices.Sort(sorted)
		means[i] = total / float64(len(lat))
		fmt.Printf("%-44s %8d %10.1f %10.1f %10.2f %6.1f MiB\n", r.name, len(lat), means[i], sorted[len(sorted)*95/100], total/1000, float64(peak.MaxRSS)/mib)
	}
	fmt.Printf("\nwalship's mean / the peer's (below 1: walship is faster)\n")
	fmt.Printf("%-44s %18s %18s %18s\n", "", runs[restPosix].short, runs[restS3].short, runs[barman].short)
	for _, i := range []int{walshipFile, walshipFile0, walshipS3, walshipS30} {
		fmt.Printf("%-44s %18.3f %18.3f %18.3f\n", runs[i].name, means[i]/means[restPosix], means[i]/means[restS3], means[i]/means[barman])
	}
	_ = exec.Command("rm", "-rf", fake).Run()
	return nil
}
