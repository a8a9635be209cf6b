package restore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	mgo "github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/faultproxy"
	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/tcpproxy"
	"github.com/walship/walship/storage/lease"
)

// interruption is how a backup is cut short.
type interruption string

const (
	killed        interruption = "kill"            // SIGKILL of walship backup
	dropped       interruption = "dropped-conn"    // its connection to PostgreSQL reset
	storageBroken interruption = "storage-failure" // every later write of its objects fails
)

// TestInterruptedBackup: a backup interrupted midway, with at least one of
// its archive objects in the repository and the walsender streaming it, by
// SIGKILL, a dropped connection or a storage failure that persists, on the
// file store and on MinIO (storage/s3 and storage/minio), on PostgreSQL 14,
// 15 and 18: `walship list` never shows it as a backup, and after `walship
// prune` the storage holds exactly what it held before the backup began,
// every file on disk and every object and incomplete multipart upload in
// the bucket counted, leases aside.
func TestInterruptedBackup(t *testing.T) {
	bin := clitest.Binary(t)
	srv := miniotest.Start(t)
	type interruptCase struct {
		how   interruption
		store string // file, s3 (storage/s3) or minio (storage/minio)
	}
	// One cluster per version, each running its cases while the others run
	// theirs.
	for _, g := range []struct {
		version int
		cases   []interruptCase
	}{
		{15, []interruptCase{{killed, "file"}, {storageBroken, "s3"}}},
		{18, []interruptCase{{killed, "s3"}, {dropped, "file"}}},
		{14, []interruptCase{{dropped, "minio"}, {storageBroken, "file"}}},
	} {
		t.Run(fmt.Sprintf("pg%d", g.version), func(t *testing.T) {
			t.Parallel()
			c := startNoisy(t, g.version)
			for i, tc := range g.cases {
				t.Run(fmt.Sprintf("%s/%s", tc.how, tc.store), func(t *testing.T) {
					interruptBackup(t, bin, c, newRawRepo(t, srv, tc.store), tc.how, fmt.Sprintf("walship_interrupted_%d", i))
				})
			}
		})
	}
}

// startNoisy starts a cluster holding 30 MB of incompressible bytes in 12
// tables: a backup cut into 16 MiB parts makes several, and each is a
// multipart upload in 5 MiB parts, under way for most of the time it takes.
func startNoisy(t *testing.T, version int) *pgtest.Cluster {
	start := time.Now()
	c := pgtest.Start(t, pgtest.Options{Version: version})
	for i := range 12 {
		c.Exec(t, fmt.Sprintf("CREATE TABLE noise%d AS SELECT g, (SELECT string_agg(sha512((g * 100 + i)::text::bytea), ''::bytea) FROM generate_series(%d, %d) i) AS v FROM generate_series(1, 2400) g", i, 16*i, 16*i+15))
	}
	t.Logf("PostgreSQL %d with 30 MB of noise in %s", version, time.Since(start).Round(time.Millisecond))
	return c
}

// rawRepo is a repository and a way to see everything its storage holds,
// including what walship's listings hide.
type rawRepo struct {
	url    string // as walship takes it
	store  string
	dir    string // file: the repository directory
	srv    *miniotest.Server
	bucket string
}

// s3Prefix is the key prefix of the repositories in a bucket.
const s3Prefix = "pg"

func newRawRepo(t *testing.T, srv *miniotest.Server, store string) *rawRepo {
	r := &rawRepo{store: store, srv: srv}
	switch store {
	case "file":
		r.dir = filepath.Join(pgtest.MkdirOwned(t), "repo")
		r.url = "file://" + r.dir
	case "s3":
		r.bucket = srv.Bucket(t)
		r.url = r.s3URL(srv.URL())
	case "minio":
		r.bucket = srv.Bucket(t)
		r.url = fmt.Sprintf("minio://%s/%s/%s?secure=false&part-size=5MiB", srv.Endpoint, r.bucket, s3Prefix)
	}
	return r
}

// s3URL is the repository through storage/s3 at endpoint.
func (r *rawRepo) s3URL(endpoint string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&part-size=5MiB", r.bucket, s3Prefix, endpoint)
}

// raw lists what the storage holds, sorted, one "kind path" entry each.
// A file repository: every file ("object", or "temp" for a name starting
// with a dot) and directory ("dir", with a trailing slash) under it. A
// bucket: every object and every incomplete multipart upload ("upload"),
// with their bucket keys, the repository's prefix included.
func (r *rawRepo) raw(t *testing.T) []string {
	t.Helper()
	var out []string
	if r.store == "file" {
		err := filepath.WalkDir(r.dir, func(p string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walk
			}
			if err != nil || p == r.dir {
				return err
			}
			rel := strings.TrimPrefix(p, r.dir+"/")
			switch {
			case d.IsDir():
				out = append(out, "dir "+rel+"/")
			case strings.HasPrefix(d.Name(), "."):
				out = append(out, "temp "+rel)
			default:
				out = append(out, "object "+rel)
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	} else {
		cl := r.srv.Client(t)
		for o := range cl.ListObjects(t.Context(), r.bucket, mgo.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatalf("list %s: %v", r.bucket, o.Err)
			}
			out = append(out, "object "+o.Key)
		}
		out = append(out, r.uploads(t, "")...)
	}
	slices.Sort(out)
	return out
}

// uploads lists the incomplete multipart uploads of the bucket: all of
// them for an empty key (MinIO's list of the uploads it began), else
// those of that exact key (MinIO's uploads on disk).
func (r *rawRepo) uploads(t *testing.T, key string) []string {
	t.Helper()
	var out []string
	for u := range r.srv.Client(t).ListIncompleteUploads(t.Context(), r.bucket, key, key == "") {
		if u.Err != nil {
			t.Fatalf("list the incomplete uploads of %s: %v", r.bucket, u.Err)
		}
		out = append(out, "upload "+u.Key)
	}
	return out
}

// under returns the entries of raw whose path is under the backup id.
func under(raw []string, id string) []string {
	var out []string
	for _, e := range raw {
		if strings.Contains(e, "backups/"+id+"/") {
			out = append(out, e)
		}
	}
	return out
}

// midway returns the id of a backup other than older that has a complete
// archive object in raw and, with writing, a write of another object under
// way (a temporary file or an incomplete upload of a name not stored yet).
func midway(raw []string, older string, writing bool) string {
	objects, writes := map[string]bool{}, map[string][]string{}
	for _, e := range raw {
		kind, path, _ := strings.Cut(e, " ")
		_, rest, ok := strings.Cut(path, "backups/")
		id, name, ok2 := strings.Cut(rest, "/")
		if !ok || !ok2 || id == older || name == "" {
			continue
		}
		switch kind {
		case "object":
			objects[id+"/"+name] = true
		case "temp":
			if i := strings.LastIndex(name, ".tmp-"); i > 1 {
				writes[id] = append(writes[id], name[1:i])
			}
		case "upload":
			writes[id] = append(writes[id], name)
		}
	}
	for key := range objects {
		id, name, _ := strings.Cut(key, "/")
		if !strings.HasSuffix(name, ".tar") {
			continue
		}
		if !writing || slices.ContainsFunc(writes[id], func(w string) bool { return !objects[id+"/"+w] }) {
			return id
		}
	}
	return ""
}

// walship runs the walship binary on repoURL as the server's user, with
// the MinIO server's credentials.
func (r *rawRepo) walship(t *testing.T, bin, repoURL string, args ...string) *exec.Cmd {
	cmd := walshipOn(t, bin, repoURL)(args...)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+r.srv.AccessKey, "AWS_SECRET_ACCESS_KEY="+r.srv.SecretKey, "AWS_REGION=us-east-1")
	return cmd
}

func (r *rawRepo) list(t *testing.T, bin string) listingJSON {
	t.Helper()
	out, err := r.walship(t, bin, r.url, "list", "--json").Output()
	if err != nil {
		t.Fatalf("walship list: %v", err)
	}
	var l listingJSON
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

// prune prunes with a sweep of every leftover: nothing else runs.
func (r *rawRepo) prune(t *testing.T, bin string) string {
	t.Helper()
	out, err := r.walship(t, bin, r.url, "prune", "--keep", "10", "--sweep-older-than", "1ms").CombinedOutput()
	if err != nil {
		t.Fatalf("walship prune: %v\n%s", err, out)
	}
	return string(out)
}

// interruptBackup takes a backup, prunes, and notes what the storage
// holds; interrupts a second backup midway as how says; checks that list
// does not show it, then that after a prune the storage holds what it held
// before, leases aside.
func interruptBackup(t *testing.T, bin string, c *pgtest.Cluster, r *rawRepo, how interruption, slot string) {
	args := []string{"backup", "--fast", "--slot", slot, "--part-size", "16MiB"}
	first := r.walship(t, bin, r.url, append(args, "--pg", c.ConnString())...)
	var stderr strings.Builder
	first.Stderr = &stderr
	out, err := first.Output()
	if err != nil {
		t.Fatalf("walship backup: %v\n%s", err, lastLines(stderr.String(), 20))
	}
	older := strings.TrimSpace(string(out))
	r.prune(t, bin)
	before := r.raw(t)

	pg, repoURL := c.ConnString(), r.url
	var conn *tcpproxy.Proxy
	var faults *faultproxy.Proxy
	switch {
	case how == dropped:
		conn = tcpproxy.Start(t, fmt.Sprintf("127.0.0.1:%d", c.Port()))
		pg = strings.Replace(pg, fmt.Sprintf("port=%d", c.Port()), fmt.Sprintf("port=%d", conn.Port()), 1)
	case how == storageBroken && r.store == "s3":
		faults = faultproxy.Start(t, r.srv.URL())
		repoURL = r.s3URL(faults.URL())
	}
	logPath := filepath.Join(t.TempDir(), "backup.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// Throttled to 10 MB/s, so that it is midway for seconds.
	cmd := r.walship(t, bin, repoURL, append(args, "--pg", pg, "--max-rate", "10240", "--lease-ttl", "1s")...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	})
	backupLog := func() string { b, _ := os.ReadFile(logPath); return lastLines(string(b), 15) }

	// Midway: an archive object of it is stored, and for a kill or a
	// storage failure the next one is being written; its walsender is
	// streaming.
	var id string
	var mid []string
	waitFor(t, time.Minute, "backup midway", func() bool {
		select {
		case err := <-done:
			t.Fatalf("walship backup ended (%v) before it could be interrupted:\n%s", err, backupLog())
		default:
		}
		mid = r.raw(t)
		id = midway(mid, older, how != dropped)
		return id != ""
	})
	streamed := c.Scalar(t, "SELECT coalesce(max(p.backup_streamed), -1) FROM pg_stat_progress_basebackup p JOIN pg_stat_replication r USING (pid) WHERE r.state = 'backup'")
	if streamed == "-1" || streamed == "0" {
		t.Fatalf("no walsender streaming a backup (bytes streamed %s) once backup %s had stored %q", streamed, id, under(mid, id))
	}
	t.Logf("backup %s midway after %s: %s bytes streamed; storage holds %q", id, time.Since(start).Round(time.Millisecond), streamed, under(mid, id))

	interrupted := time.Now()
	switch {
	case how == killed:
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	case how == dropped:
		t.Logf("dropped %d connections", conn.Drop())
	case how == storageBroken && r.store == "file":
		dir := filepath.Join(r.dir, "backups", id)
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := os.Chmod(dir, 0o755); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Error(err)
			}
		}()
	case how == storageBroken:
		// Writes and aborts fail, so the upload under way stays behind.
		faults.Set(
			faultproxy.Rule{Op: faultproxy.Put, Key: "/backups/", Fault: faultproxy.InternalError},
			faultproxy.Rule{Op: faultproxy.Delete, Key: "/backups/", Fault: faultproxy.InternalError},
		)
	}
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("walship backup still runs 2 minutes after it was interrupted:\n%s", backupLog())
	}
	var ee *exec.ExitError
	switch {
	case how == killed && (!errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL):
		t.Fatalf("walship backup: %v, want killed", err)
	case how != killed && (!errors.As(err, &ee) || ee.ExitCode() != 1):
		t.Fatalf("walship backup: %v, want exit 1:\n%s", err, backupLog())
	case how != killed:
		t.Logf("walship backup failed after %s:\n%s", time.Since(start).Round(time.Millisecond), lastLines(backupLog(), 2))
	}
	if how == storageBroken && r.store == "file" {
		if err := os.Chmod(filepath.Join(r.dir, "backups", id), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if faults != nil {
		t.Logf("faults injected %v", faults.Injected())
		faults.Clear()
	}

	// Never a backup, at most an unfinished one.
	if l := r.list(t, bin); len(l.Backups) != 1 || l.Backups[0].ID != older {
		t.Errorf("list shows backups %v after %s of %s, want only %s", l.Backups, how, id, older)
	}
	left := under(r.raw(t), id)
	t.Logf("left behind: %q", left)
	var leftovers, uploads []string
	for _, e := range left {
		if kind, path, _ := strings.Cut(e, " "); kind == "temp" || kind == "upload" {
			leftovers = append(leftovers, e)
			if kind == "upload" {
				uploads = append(uploads, path)
				if len(r.uploads(t, path)) == 0 {
					t.Errorf("MinIO lists an upload of %s in the bucket but none under its key", path)
				}
			}
		}
	}
	if how != dropped && len(leftovers) == 0 {
		t.Errorf("the %s left no temporary file or incomplete upload: the test did not interrupt a write", how)
	}

	if how == killed {
		// Its backup lease (TTL 1s) expires, and prune waits out the
		// clock skew it allows before taking it over.
		time.Sleep(time.Until(interrupted.Add(time.Second + lease.DefaultClockSkew + 500*time.Millisecond)))
	}
	out2 := r.prune(t, bin)
	t.Logf("prune:\n%s", lastLines(out2, 12))
	after := r.raw(t)
	if got, want := withoutLeases(t, after), withoutLeases(t, before); !slices.Equal(got, want) {
		t.Errorf("after prune the storage holds\n%s\nbefore the backup it held\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, key := range uploads {
		if got := r.uploads(t, key); len(got) > 0 {
			t.Errorf("after prune MinIO still has uploads under %s: %q", key, got)
		}
	}
	if l := r.list(t, bin); len(l.Backups) != 1 || l.Backups[0].ID != older || len(l.Unfinished) != 0 {
		t.Errorf("after prune list shows backups %v, unfinished %v; want %s and none", l.Backups, l.Unfinished, older)
	}
}

// withoutLeases drops the lease objects of raw, whose generations change
// with every backup and prune, after checking that they are all leases.
func withoutLeases(t *testing.T, raw []string) []string {
	var out []string
	for _, e := range raw {
		kind, path, _ := strings.Cut(e, " ")
		rest, ok := strings.CutPrefix(strings.TrimPrefix(path, s3Prefix+"/"), "locks/")
		if !ok {
			out = append(out, e)
			continue
		}
		name, gen, _ := strings.Cut(rest, "/")
		if kind == "dir" && (rest == "" || gen == "") {
			continue
		}
		if (name != "archiver" && name != "backup") || kind != "object" || len(gen) != 16 {
			t.Errorf("not a lease: %s", e)
		}
	}
	return out
}
