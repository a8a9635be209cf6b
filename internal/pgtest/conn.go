package pgtest

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Version returns the cluster's PostgreSQL major version.
func (c *Cluster) Version() int { return c.version }

// BinDir returns the directory of the cluster's server binaries (initdb,
// pg_ctl, postgres). The client tools are Debian's, from ClientBin.
func (c *Cluster) BinDir() string { return c.binDir }

// DataDir returns the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// Port returns the TCP port the server listens on, at 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// LogPath returns the file that collects the server's output.
func (c *Cluster) LogPath() string { return c.logPath }

// ConnString returns a keyword/value connection string for the postgres
// database as the postgres superuser, over TCP.
func (c *Cluster) ConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.port)
}

// ReplConnString returns ConnString for a physical replication connection,
// as pg_basebackup and pg_receivewal make.
func (c *Cluster) ReplConnString() string {
	return c.ConnString() + " replication=true"
}

// Conn returns a new connection to the postgres database, closed when the
// test ends.
func (c *Cluster) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	conn := c.connect(t)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (c *Cluster) connect(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), c.ConnString())
	if err != nil {
		t.Fatalf("connect to PostgreSQL %d at port %d: %v", c.version, c.port, err)
	}
	return conn
}

// Exec runs sql on a connection of its own, failing the test on error.
// Without args, sql may hold several statements.
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	conn := c.connect(t)
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("PostgreSQL %d: %s: %v", c.version, sql, err)
	}
}

// Scalar runs a query on a connection of its own and returns the first column
// of its first row in PostgreSQL's text form ("on", "1MB", "150004"), or ""
// for NULL. It fails the test on error or when there is no row.
func (c *Cluster) Scalar(t testing.TB, sql string, args ...any) string {
	t.Helper()
	conn := c.connect(t)
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), sql,
		append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		t.Fatalf("PostgreSQL %d: %s: %v", c.version, sql, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			t.Fatalf("PostgreSQL %d: %s: %v", c.version, sql, err)
		}
		t.Fatalf("PostgreSQL %d: %s: no rows", c.version, sql)
	}
	values := rows.RawValues()
	if len(values) == 0 {
		t.Fatalf("PostgreSQL %d: %s: no columns", c.version, sql)
	}
	value := string(values[0])
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatalf("PostgreSQL %d: %s: %v", c.version, sql, err)
	}
	return value
}
