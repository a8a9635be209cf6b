package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walship/walship/internal/wal"
)

// StartOptions say how Start runs PostgreSQL on a restored data directory.
type StartOptions struct {
	Dir    string
	BinDir string // holds postgres and pg_ctl; "" looks them up in PATH
	// Action is the recovery_target_action the directory was restored with.
	Action string
	// KeepRunning leaves the server running on its own configuration once
	// recovery reached its target; otherwise it is stopped.
	KeepRunning bool
	Log         *slog.Logger
}

// Outcome is where recovery ended.
type Outcome struct {
	LSN      wal.LSN        // the last record replayed
	Time     time.Time      // the last transaction replayed; zero if none
	Timeline wal.TimeLineID // the timeline the server is on
	Running  bool
}

// Start runs PostgreSQL on a restored data directory until recovery reaches
// its target, and reports where it ended. While recovering, the server
// listens only on a private socket with its own trust-only hba file, so that
// nobody connects to a half-recovered database; with KeepRunning it is
// restarted on its own configuration afterwards.
func Start(ctx context.Context, o StartOptions) (Outcome, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() == 0 {
		return Outcome{}, errors.New("PostgreSQL refuses to run as root: run restore --start as the user that owns the data directory (sudo -u postgres walship ...), or leave out --start")
	}
	postgres, err := findBin(o.BinDir, "postgres")
	if err != nil {
		return Outcome{}, err
	}
	private, err := os.MkdirTemp("", "walship-recovery-")
	if err != nil {
		return Outcome{}, err
	}
	defer os.RemoveAll(private)
	hba := filepath.Join(private, "pg_hba.conf")
	if err := os.WriteFile(hba, []byte("local all all trust\n"), 0o600); err != nil {
		return Outcome{}, err
	}
	logPath := filepath.Join(private, "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return Outcome{}, err
	}
	defer logFile.Close()
	const port = "5432" // only names the private socket
	cmd := exec.Command(postgres, "-D", o.Dir, "-c", "listen_addresses=", "-c", "unix_socket_directories="+private,
		"-c", "port="+port, "-c", "hba_file="+hba)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return Outcome{}, fmt.Errorf("start %s: %w", postgres, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
			return waitErr
		case <-time.After(5 * time.Minute):
			_ = cmd.Process.Kill()
			<-exited
			return errors.New("PostgreSQL did not stop within 5 minutes")
		}
	}
	log.Info("recovering", slog.String("dir", o.Dir), slog.String("server_log", logPath))

	out, err := awaitTarget(ctx, o.Action, private, port, exited, &waitErr)
	if err != nil {
		_ = stop()
		return Outcome{}, fmt.Errorf("%w\n%s", err, tail(logPath, 20))
	}
	select {
	case <-exited:
		// It shut down at the target: shutdown, or pause without
		// hot_standby.
		return controlOutcome(o.BinDir, o.Dir)
	default:
	}
	if err := stop(); err != nil && !isSignalExit(err) {
		return out, fmt.Errorf("stop PostgreSQL: %w", err)
	}
	if !o.KeepRunning {
		return out, nil
	}
	pgCtl, err := findBin(o.BinDir, "pg_ctl")
	if err != nil {
		return out, err
	}
	serverLog := filepath.Join(o.Dir, "walship-start.log")
	if b, err := exec.Command(pgCtl, "-D", o.Dir, "-l", serverLog, "-w", "start").CombinedOutput(); err != nil {
		return out, fmt.Errorf("restart PostgreSQL on its own configuration: %v\n%s", err, b)
	}
	out.Running = true
	return out, nil
}

// awaitTarget polls the recovering server until it acts on reaching its
// target: promoted, paused, or shut down.
func awaitTarget(ctx context.Context, action, socketDir, port string, exited <-chan struct{}, waitErr *error) (Outcome, error) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		case <-exited:
			if (action == "shutdown" || action == "pause") && *waitErr == nil {
				return Outcome{}, nil // stopped at the target
			}
			return Outcome{}, fmt.Errorf("PostgreSQL stopped before recovery reached its target (%v)", *waitErr)
		case <-tick.C:
		}
		if conn == nil {
			conn = connectLocal(ctx, socketDir, port)
			if conn == nil {
				continue // not accepting connections yet
			}
		}
		var inRecovery bool
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			_ = conn.Close(ctx)
			conn = nil
			continue
		}
		done := !inRecovery
		if inRecovery && action == "pause" {
			var state string
			if err := conn.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&state); err == nil && state == "paused" {
				done = true
			}
		}
		if done {
			return outcome(ctx, conn, inRecovery)
		}
	}
}

func outcome(ctx context.Context, conn *pgx.Conn, inRecovery bool) (Outcome, error) {
	var lsn, tli string
	var at *time.Time
	tliQuery := "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
	if inRecovery {
		tliQuery = "lpad(to_hex((SELECT timeline_id FROM pg_control_checkpoint())), 8, '0')"
	}
	err := conn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn()::text, ''), pg_last_xact_replay_timestamp(), "+tliQuery).Scan(&lsn, &at, &tli)
	if err != nil {
		return Outcome{}, fmt.Errorf("read where recovery ended: %w", err)
	}
	var out Outcome
	if lsn != "" {
		if out.LSN, err = wal.ParseLSN(lsn); err != nil {
			return Outcome{}, err
		}
	}
	if at != nil {
		out.Time = at.UTC()
	}
	t, err := strconv.ParseUint(tli, 16, 32)
	if err != nil {
		return Outcome{}, fmt.Errorf("timeline %q: %w", tli, err)
	}
	out.Timeline = wal.TimeLineID(t)
	return out, nil
}

// connectLocal connects through the private socket as the server's own
// user, or nil while the server is not accepting connections.
func connectLocal(ctx context.Context, socketDir, port string) *pgx.Conn {
	names := []string{os.Getenv("PGUSER")}
	if u, err := user.Current(); err == nil {
		names = append(names, u.Username)
	}
	names = append(names, "postgres")
	for _, name := range names {
		if name == "" {
			continue
		}
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=postgres connect_timeout=5", socketDir, port, name))
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.ConnectConfig(cctx, cfg)
		cancel()
		if err == nil {
			return conn
		}
	}
	return nil
}

func findBin(dir, name string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--pg-bin %s: no %s there", dir, name)
		}
		return p, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is not in PATH; give the PostgreSQL binaries' directory with --pg-bin", name)
	}
	return p, nil
}

func isSignalExit(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && !ee.Exited()
}

// tail is the last n lines of a file, for an error message.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "server log, last lines:\n" + strings.Join(lines, "\n")
}

// controlOutcome reads where recovery ended from pg_control, for a server
// that shut down at its target; without pg_controldata it reports nothing.
func controlOutcome(binDir, dir string) (Outcome, error) {
	bin, err := findBin(binDir, "pg_controldata")
	if err != nil {
		return Outcome{}, nil // the server stopped at its target; where exactly is not known here
	}
	cmd := exec.Command(bin, "-D", dir)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	b, err := cmd.Output()
	if err != nil {
		return Outcome{}, fmt.Errorf("pg_controldata: %w", err)
	}
	var out Outcome
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "Minimum recovery ending location":
			if out.LSN, err = wal.ParseLSN(v); err != nil {
				return Outcome{}, fmt.Errorf("pg_controldata: %w", err)
			}
		case "Min recovery ending loc's timeline":
			t, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return Outcome{}, fmt.Errorf("pg_controldata: timeline %q", v)
			}
			out.Timeline = wal.TimeLineID(t)
		}
	}
	return out, nil
}
