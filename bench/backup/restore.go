package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/restore"
)

// restoreBench restores the newest backup of each tool into an empty
// directory, rounds times in a rotated order, and prints the times and
// walship's ratios:
//
//   - walship restore from the file repository and from MinIO (latest
//     target: planning, download, zstd, tar extraction, fsync, recovery
//     settings);
//   - pgbackrest restore (posix repository, process-max=2, zst);
//   - zstd -dc base.tar.zst | tar -x of pg_basebackup's output, then sync:
//     the bare unpacking of a compressed tar, for reference;
//   - walship restore from the file repository one archive part at a time,
//     which shows what extracting the parts in parallel gains.
//
// Nothing is started on the restored directories: this is the time to
// recreate the data directory; WAL replay is PostgreSQL's either way.
func restoreBench(ctx context.Context, env []string, work, walship, fileRepo, s3Repo string, pgbackrest []string, conn string, rounds int) error {
	if err := ensurePackage(ctx, "zstd", "zstd"); err != nil {
		return err
	}
	bbKeep := filepath.Join(work, "pg_basebackup-kept")
	if _, err := capture(ctx, nil, pgBin+"/pg_basebackup", "-D", bbKeep, "-Ft", "--compress=client-zstd", "-X", "none", "--checkpoint=fast", "-d", conn); err != nil {
		return fmt.Errorf("pg_basebackup for the unpacking run: %w", err)
	}
	target := filepath.Join(work, "restored")
	tools := []tool{
		{name: "walship restore, file repository", args: []string{walship, "--repo", "file://" + fileRepo, "restore", "--target-dir", target}},
		{name: "walship restore, MinIO (s3)", args: []string{walship, "--repo", s3Repo, "restore", "--target-dir", target}, minio: true},
		{name: "pgbackrest restore, process-max=2", args: append(slices.Clone(pgbackrest), "--pg1-path="+target, "restore")},
		{name: "zstd -dc | tar -x of pg_basebackup, sync", args: []string{"sh", "-c", fmt.Sprintf("zstd -dcq %s/base.tar.zst | tar -xf - -C %s && sync", bbKeep, target)}},
		{name: "walship restore --parallel 1, file", args: []string{walship, "--repo", "file://" + fileRepo, "restore", "--parallel", "1", "--target-dir", target}},
	}
	const walshipFile, walshipS3, rest, untar, walshipSerial = 0, 1, 2, 3, 4
	fmt.Printf("\nrestore of the newest backup into an empty directory\n")
	printHeader()
	results := make([][]result, len(tools))
	for round := range rounds {
		for k := range tools {
			i := (k + round) % len(tools)
			if err := os.RemoveAll(target); err != nil {
				return err
			}
			if i == untar || i == rest {
				// pgBackRest runs as postgres; tar needs the directory.
				if err := sh(ctx, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", target); err != nil {
					return err
				}
			}
			res, out, err := timed(ctx, env, tools[i].args, false)
			if err != nil {
				return fmt.Errorf("%s: %w\n%s", tools[i].name, err, out)
			}
			res.stored = -1
			results[i] = append(results[i], res)
			printRow(tools[i].name, res)
		}
	}
	_ = os.RemoveAll(target)
	med := medians(tools, results)
	fmt.Printf("\nwalship's restore time / the peer's (below 1: walship is faster)\n")
	fmt.Printf("%-34s %18s %18s\n", "", "pgbackrest restore", "zstd | tar")
	for _, i := range []int{walshipFile, walshipS3, walshipSerial} {
		fmt.Printf("%-34s %18.2f %18.2f\n", tools[i].name, med[i].wall/med[rest].wall, med[i].wall/med[untar].wall)
	}
	return nil
}

// walFetchBench generates segments of WAL, archives them with walship and
// pgBackRest, and times restore_command for each segment in order, as
// recovery calls it, with a pause between calls standing for replay: the
// restore_command walship restore writes (a spooled segment is renamed by
// the shell; otherwise wal-fetch, whose keeper prefetches), wal-fetch without
// prefetch, and pgbackrest archive-get. It prints the mean and 95th percentile per segment.
func walFetchBench(ctx context.Context, env []string, work, data, walship, fileRepo string, pgbackrest []string, conn string, segments int) error {
	psql := func(sql string) (string, error) {
		out, err := capture(ctx, nil, pgBin+"/psql", "-d", conn, "-Atqc", sql)
		return strings.TrimSpace(string(out)), err
	}
	first, err := psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
	if err != nil {
		return err
	}
	// About segments × 16 MB of WAL.
	rows := segments * 16 << 20 / 100
	if _, err := psql(fmt.Sprintf("CREATE TABLE walgen AS SELECT g, md5(g::text) AS v FROM generate_series(1, %d) g", rows)); err != nil {
		return err
	}
	last, err := psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
	if err != nil {
		return err
	}
	if _, err := psql("SELECT pg_switch_wal()"); err != nil {
		return err
	}
	// Every complete segment from first to before last, both archived.
	entries, err := os.ReadDir(filepath.Join(data, "pg_wal"))
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if len(n) == 24 && n >= first && n < last {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	if len(names) > segments {
		names = names[:segments]
	}
	for _, n := range names {
		if _, err := capture(ctx, nil, append(slices.Clone(pgbackrest), "archive-push", filepath.Join(data, "pg_wal", n))...); err != nil {
			return fmt.Errorf("pgbackrest archive-push %s: %w", n, err)
		}
	}
	if _, err := capture(ctx, env, walship, "--repo", "file://"+fileRepo, "archive", "--pg", conn, "--slot", "walship_file", "--until-caught-up"); err != nil {
		return err
	}

	// A directory that looks like a data directory, for restore_command's
	// working directory (walship puts its spool there).
	fake := filepath.Join(work, "fake-data")
	if err := sh(ctx, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", fake, fake+"/pg_wal"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(fake, "PG_VERSION"), []byte("15\n"), 0o644); err != nil {
		return err
	}
	const replay = 50 * time.Millisecond
	runs := []struct {
		name string
		cmd  func(name string) []string
	}{
		{"walship restore_command (prefetch 8)", func(n string) []string {
			// What walship restore writes, as PostgreSQL runs it.
			cmd := restore.RestoreCommand(walship, "file://"+fileRepo, "")
			cmd = strings.NewReplacer("%f", n, "%p", "pg_wal/RECOVERYXLOG").Replace(cmd)
			return []string{"sh", "-c", cmd}
		}},
		{"walship wal-fetch --prefetch 0", func(n string) []string {
			return []string{walship, "--repo", "file://" + fileRepo, "--log-level", "warn", "wal-fetch", "--prefetch", "0", n, "pg_wal/RECOVERYXLOG"}
		}},
		{"pgbackrest archive-get", func(n string) []string {
			return append(slices.Clone(pgbackrest), "archive-get", n, filepath.Join(fake, "pg_wal/RECOVERYXLOG"))
		}},
	}
	fmt.Printf("\nrestore_command per segment: %d segments of 16 MB in order, %v of replay between calls\n", len(names), replay)
	fmt.Printf("%-34s %10s %10s %10s\n", "run", "mean ms", "p95 ms", "total s")
	means := make([]float64, len(runs))
	for i, r := range runs {
		_ = os.RemoveAll(filepath.Join(fake, "walship_prefetch"))
		var lat []float64
		for _, n := range names {
			_ = os.Remove(filepath.Join(fake, "pg_wal/RECOVERYXLOG")) // as PostgreSQL does after each
			cmd := command(ctx, env, r.cmd(n))
			cmd.Dir = fake
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s: %w\n%s", r.name, n, err, out)
			}
			lat = append(lat, float64(time.Since(start).Microseconds())/1000)
			time.Sleep(replay)
		}
		total := 0.0
		for _, v := range lat {
			total += v
		}
		sorted := slices.Clone(lat)
		slices.Sort(sorted)
		means[i] = total / float64(len(lat))
		fmt.Printf("%-34s %10.1f %10.1f %10.2f\n", r.name, means[i], sorted[len(sorted)*95/100], total/1000)
	}
	fmt.Printf("\npgbackrest archive-get's mean / walship's (above 1: walship is faster): with prefetch %.1f, without %.1f\n",
		means[2]/means[0], means[2]/means[1])
	_ = exec.Command("rm", "-rf", fake).Run()
	return nil
}

// ensurePackage installs a Debian package when its command is missing.
func ensurePackage(ctx context.Context, command, pkg string) error {
	if _, err := exec.LookPath(command); err == nil {
		return nil
	}
	fmt.Printf("installing %s (apt-get install -y %s)\n", pkg, pkg)
	if sh(ctx, "apt-get", "install", "-y", pkg) == nil {
		return nil
	}
	if err := sh(ctx, "apt-get", "update"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	return sh(ctx, "apt-get", "install", "-y", pkg)
}
