package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// startTimeout bounds the wait for a server to accept connections,
	// crash recovery included.
	startTimeout = 60 * time.Second
	// stopTimeout bounds a fast shutdown before the server is killed.
	stopTimeout = 10 * time.Second
	// portTries is how often a first start picks another port when the one
	// it picked was taken in the meantime.
	portTries = 5
)

// Options says which cluster Start makes. The zero value is a PostgreSQL 15
// cluster with 1 MB WAL segments.
type Options struct {
	// Version is the major version, 14 to 18; 0 means DefaultVersion.
	Version int
	// WALSegSizeMB is the WAL segment size in megabytes, a power of two
	// from 1 to 1024; 0 means 1, the fast default. Keep 16, PostgreSQL's
	// own default, for the few tests that need it.
	WALSegSizeMB int
	// Conf lines are appended to postgresql.conf, after pgtest's own
	// settings, so they win: "archive_mode = on", say.
	Conf []string
	// Fresh runs initdb for this cluster instead of copying the template
	// this process made, so that it gets a system identifier of its own.
	Fresh bool
}

// Cluster is one test server and its data directory. Its methods that take a
// testing.TB must be called from the test's goroutine, like t.Fatal.
type Cluster struct {
	version int
	binDir  string
	dir     string // the socket and server.log; removed when the test ends
	dataDir string
	logPath string
	port    int // set before the first start, then fixed

	mu  sync.Mutex
	srv *server // nil while stopped
}

// server is one run of the postmaster.
type server struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the postmaster has exited and was reaped
	err  error         // from cmd.Wait, once done is closed
}

// errPortTaken marks a start that failed because another process bound the
// port first.
var errPortTaken = errors.New("port taken")

// Start makes a new cluster in a temporary directory, starts its server and
// waits until it accepts connections. The server listens on 127.0.0.1 at a
// free port, trusts every local connection (replication too), has
// wal_level=replica, data checksums and fsync=off. When the test ends the
// server is stopped and the directory removed, after logging the end of the
// server's log if the test failed. Start fails the test, never skips it, when
// the binaries are not installed.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := newCluster(t, opts)
	segMB := opts.WALSegSizeMB
	if segMB == 0 {
		segMB = 1
	}
	if segMB < 1 || segMB > 1024 || segMB&(segMB-1) != 0 {
		t.Fatalf("pgtest: WALSegSizeMB %d: want a power of two from 1 to 1024", opts.WALSegSizeMB)
	}
	c.dataDir = filepath.Join(c.dir, "data")
	if opts.Fresh {
		if err := initCluster(c.binDir, c.version, segMB, c.dataDir); err != nil {
			t.Fatal(err)
		}
	} else {
		tmpl, err := template(c.binDir, c.version, segMB)
		if err != nil {
			t.Fatal(err)
		}
		if err := copyTree(tmpl, c.dataDir); err != nil {
			t.Fatal(err)
		}
	}
	c.startFirst(t, opts.Conf)
	return c
}

// StartDataDir starts a server on an existing data directory, such as a
// restored backup in a directory from MkdirOwned, owned by the server user
// (see Own and RunAs). opts.Conf lines are appended to its postgresql.conf
// (restore_command, recovery targets); WALSegSizeMB and Fresh are ignored. The
// server gets a port and socket directory of its own, given on its command
// line, and is stopped when the test ends; the data directory is left to its
// owner.
func StartDataDir(t testing.TB, dataDir string, opts Options) *Cluster {
	t.Helper()
	c := newCluster(t, opts)
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	c.dataDir = abs
	c.startFirst(t, opts.Conf)
	return c
}

func newCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	version := opts.Version
	if version == 0 {
		version = DefaultVersion
	}
	binDir, err := BinDir(version)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := mkdirOwned("c")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{
		version: version,
		binDir:  binDir,
		dir:     dir,
		logPath: filepath.Join(dir, "server.log"),
	}
	t.Cleanup(func() { c.cleanup(t) })
	return c
}

// startFirst appends conf to postgresql.conf and starts the server, on
// another port if the one it picked is taken by the time the server binds it.
func (c *Cluster) startFirst(t testing.TB, conf []string) {
	t.Helper()
	if len(conf) > 0 {
		text := "\n# pgtest.Options.Conf\n" + strings.Join(conf, "\n") + "\n"
		if err := appendFile(filepath.Join(c.dataDir, "postgresql.conf"), text); err != nil {
			t.Fatal(err)
		}
	}
	for try := 1; ; try++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		c.port = port
		err = c.start()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || try == portTries {
			t.Fatal(err)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	return port, nil
}

// start runs the postmaster as a child of this process, in its own process
// group, and waits until it accepts connections.
func (c *Cluster) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv != nil {
		return fmt.Errorf("PostgreSQL %d in %s: already running", c.version, c.dataDir)
	}
	logFile, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logFile.Close()
	info, err := logFile.Stat()
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	logOffset := info.Size()

	cmd := exec.Command(filepath.Join(c.binDir, "postgres"),
		"-D", c.dataDir,
		"-c", "port="+strconv.Itoa(c.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+c.dir,
	)
	cmd.Dir = c.dir
	cmd.Env = serverEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Its own process group, so that signals to ours (^C) do not reach it
	// before we stop it; SIGQUIT (immediate shutdown) if we die first.
	// Pdeathsig follows the thread that started it; Go keeps threads alive.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := setCredential(cmd); err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start PostgreSQL %d in %s: %w", c.version, c.dataDir, err)
	}
	srv := &server{cmd: cmd, done: make(chan struct{})}
	go func() {
		srv.err = cmd.Wait()
		close(srv.done)
	}()
	if err := c.waitReady(srv, logOffset); err != nil {
		kill(srv)
		return err
	}
	c.srv = srv
	return nil
}

// waitReady connects until the server accepts, exits or startTimeout passes.
func (c *Cluster) waitReady(srv *server, logOffset int64) error {
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		dataDir, err := c.serverDataDir(ctx)
		cancel()
		if err == nil && dataDir == c.dataDir {
			return nil
		}
		if err == nil {
			// Another server had the port; ours will fail to bind it.
			return fmt.Errorf("%w: PostgreSQL %d in %s: port %d answers for %s",
				errPortTaken, c.version, c.dataDir, c.port, dataDir)
		}
		select {
		case <-srv.done:
			log := c.logSince(logOffset)
			err := fmt.Errorf("PostgreSQL %d in %s exited while starting (%v); server log:\n%s",
				c.version, c.dataDir, srv.err, log)
			if strings.Contains(log, "Address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("PostgreSQL %d in %s did not accept connections within %v: %v; server log:\n%s",
				c.version, c.dataDir, startTimeout, err, c.logSince(logOffset))
		}
	}
}

// serverDataDir connects and asks the server for its data directory.
func (c *Cluster) serverDataDir(ctx context.Context) (string, error) {
	conn, err := pgx.Connect(ctx, c.ConnString())
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var dataDir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return "", err
	}
	return dataDir, nil
}

// Stop shuts the server down (fast shutdown: SIGINT) and waits for it to
// exit, keeping the data directory. It fails the test if the server is not
// running, had exited on its own, or does not stop within 10 seconds.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	c.StopWithin(t, stopTimeout)
}

// StopWithin is Stop with its own limit: a shutdown can wait that long for
// the server's walsenders to be told their WAL is flushed.
func (c *Cluster) StopWithin(t testing.TB, limit time.Duration) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	srv := c.running(t)
	c.srv = nil
	if err := stop(srv, limit); err != nil {
		t.Fatalf("stop PostgreSQL %d in %s: %v; server log:\n%s", c.version, c.dataDir, err, c.logTail())
	}
}

// Kill crashes the server: SIGKILL to the postmaster and every process under
// it, as an out-of-memory kill or a power cut would leave it (fsync is off,
// but the operating system keeps what was written). It returns once they are
// all gone; Start then runs crash recovery.
func (c *Cluster) Kill(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	srv := c.running(t)
	c.srv = nil
	kill(srv)
}

// Start starts the server again after Stop or Kill, on the same data
// directory and port, and waits until it accepts connections.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
}

// running returns the running server, failing the test if there is none or
// it has exited on its own. c.mu is held.
func (c *Cluster) running(t testing.TB) *server {
	t.Helper()
	if c.srv == nil {
		t.Fatalf("PostgreSQL %d in %s is not running", c.version, c.dataDir)
	}
	select {
	case <-c.srv.done:
		err := c.srv.err
		c.srv = nil
		t.Fatalf("PostgreSQL %d in %s had exited on its own (%v); server log:\n%s", c.version, c.dataDir, err, c.logTail())
	default:
	}
	return c.srv
}

// cleanup stops the server if it runs and removes the cluster's directory.
func (c *Cluster) cleanup(t testing.TB) {
	c.mu.Lock()
	srv := c.srv
	c.srv = nil
	c.mu.Unlock()
	if srv != nil {
		select {
		case <-srv.done:
			t.Errorf("PostgreSQL %d in %s had exited on its own (%v)", c.version, c.dataDir, srv.err)
		default:
			if err := stop(srv, stopTimeout); err != nil {
				t.Errorf("stop PostgreSQL %d in %s: %v", c.version, c.dataDir, err)
			}
		}
	}
	if t.Failed() {
		t.Logf("PostgreSQL %d server log %s, last lines:\n%s", c.version, c.logPath, c.logTail())
	}
	if err := os.RemoveAll(c.dir); err != nil {
		t.Errorf("remove %s: %v", c.dir, err)
	}
}

// stop asks for a fast shutdown and waits limit for it, then kills.
// Signals to the postmaster go through os.Process, which knows when it has
// been reaped, so that they never reach a process that reused its pid.
func stop(srv *server, limit time.Duration) error {
	if err := srv.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal postmaster %d: %w", srv.cmd.Process.Pid, err)
	}
	select {
	case <-srv.done:
		return srv.err
	case <-time.After(limit):
		kill(srv)
		return fmt.Errorf("postmaster %d did not shut down within %v; killed it", srv.cmd.Process.Pid, limit)
	}
}

// kill SIGKILLs the postmaster, its process group and every process under
// it, and waits until they are gone. The postmaster's children lead process
// groups of their own, so the group alone would miss them. The postmaster is
// stopped first, which keeps it from forking while we look and keeps its pid
// ours until it is reaped.
func kill(srv *server) {
	var kids []int
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err == nil {
		pid := srv.cmd.Process.Pid
		kids = descendants(pid)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		for _, kid := range kids {
			_ = syscall.Kill(kid, syscall.SIGKILL)
		}
	}
	// A postmaster that had exited leaves children that see it gone and
	// exit on their own.
	<-srv.done
	// Orphans are reaped by init, if it reaps; zombies count as gone, as
	// they no longer hold the shared memory a restart checks for.
	deadline := time.Now().Add(stopTimeout)
	for _, kid := range kids {
		for !gone(kid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// descendants returns the processes under pid, from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(p); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, children[p]...)
		queue = append(queue, children[p]...)
	}
	return out
}

// procStat returns the state and parent of process pid.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], ppid, true
}

func gone(pid int) bool {
	state, _, ok := procStat(pid)
	return !ok || state == 'Z' || state == 'X'
}

// logSince returns the end of the server log written after offset.
func (c *Cluster) logSince(offset int64) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", c.logPath, err)
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	return tail(b[offset:], 40)
}

// logTail returns the last lines of the server log.
func (c *Cluster) logTail() string { return c.logSince(0) }
