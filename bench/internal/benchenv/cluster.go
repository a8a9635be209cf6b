package benchenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// PgBin holds Debian's PostgreSQL 15 programs.
const PgBin = "/usr/lib/postgresql/15/bin"

// Cluster is a PostgreSQL 15 cluster run by the postgres user, listening on
// a Unix socket in its work directory only.
type Cluster struct {
	Work       string // the work directory: socket, server log
	Data       string // the data directory
	Conn       string // libpq keyword/value string for the postgres database
	Postmaster int    // the postmaster's pid, for CPU accounting

	stopped bool
}

// StartCluster initialises a cluster in work/data (16 MB segments, trust
// authentication, no fsync at initdb), appends settings to its
// postgresql.conf after the socket settings, and starts it.
// work must belong to postgres (see WorkDir).
func StartCluster(ctx context.Context, work, settings string) (*Cluster, error) {
	c := &Cluster{Work: work, Data: filepath.Join(work, "data")}
	c.Conn = fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres", work)
	if err := Sh(ctx, "runuser", "-u", "postgres", "--", PgBin+"/initdb", "-D", c.Data, "--wal-segsize=16", "-N", "-A", "trust", "-U", "postgres"); err != nil {
		return nil, fmt.Errorf("initdb: %w", err)
	}
	conf := fmt.Sprintf("\nlisten_addresses = ''\nunix_socket_directories = '%s'\n%s", work, settings)
	f, err := os.OpenFile(filepath.Join(c.Data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteString(conf); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := Sh(ctx, "runuser", "-u", "postgres", "--", PgBin+"/pg_ctl", "-D", c.Data, "-l", filepath.Join(work, "pg.log"), "-w", "start"); err != nil {
		return nil, fmt.Errorf("pg_ctl start: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(c.Data, "postmaster.pid"))
	if err != nil {
		c.Stop()
		return nil, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	if c.Postmaster, err = strconv.Atoi(strings.TrimSpace(line)); err != nil {
		c.Stop()
		return nil, fmt.Errorf("postmaster.pid: %w", err)
	}
	return c, nil
}

// Stop stops the cluster at once (immediate mode). It does not take a
// context: it must run after an interrupt too.
func (c *Cluster) Stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	_ = exec.Command("runuser", "-u", "postgres", "--", PgBin+"/pg_ctl", "-D", c.Data, "-m", "immediate", "stop").Run()
}

// Psql runs SQL and returns its unaligned, trimmed output.
func (c *Cluster) Psql(ctx context.Context, sql string) (string, error) {
	out, err := Capture(ctx, nil, PgBin+"/psql", "-d", c.Conn, "-Atqc", sql)
	if err != nil {
		return "", fmt.Errorf("psql %q: %w", sql, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// CPU is the CPU seconds every postgres process has used so far (see
// PgCPU).
func (c *Cluster) CPU() float64 { return PgCPU(c.Postmaster) }
