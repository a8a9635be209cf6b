package archiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/lease"
)

// prependHBA puts lines before pgtest's trust-everything pg_hba.conf lines
// and reloads the server.
func prependHBA(t *testing.T, c *pgtest.Cluster, lines string) {
	p := filepath.Join(c.DataDir(), "pg_hba.conf")
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, append([]byte(lines+"\n"), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "SELECT pg_reload_conf()")
}

func TestConnectErrors(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'right-secret'")
	c.Exec(t, "CREATE ROLE norep LOGIN")
	prependHBA(t, c, "host all pwuser 127.0.0.1/32 scram-sha-256\nhost replication pwuser 127.0.0.1/32 scram-sha-256")
	base := strings.Replace(c.ConnString(), "user=postgres", "", 1)
	cases := []struct {
		name, conn, want string
	}{
		{"wrong password", base + " user=pwuser password=wrong-secret", "check the password"},
		{"no replication privilege", base + " user=norep", "REPLICATION"},
		{"nobody listening", "host=127.0.0.1 port=1 user=postgres connect_timeout=2", "connect"},
		{"bad connection string", "host=127.0.0.1 port=notaport password=hunter2", "connection string"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(t.Context(), fileRepo(t), Config{ConnString: tc.conn, UntilCaughtUp: true, Log: testLogger(t)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error saying %q", err, tc.want)
			}
			for _, secret := range []string{"wrong-secret", "right-secret", "hunter2"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows a password: %v", err)
				}
			}
		})
	}
	// The right password works, and the error types tell config from
	// transient problems.
	if _, err := Run(t.Context(), fileRepo(t), Config{ConnString: base + " user=pwuser password=right-secret", UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
		t.Fatalf("right password: %v", err)
	}
	// libpq's own ways to give the password: PGPASSWORD, then a password
	// file (PGPASSFILE, or ~/.pgpass), as deployments mount them.
	t.Run("PGPASSWORD", func(t *testing.T) {
		t.Setenv("PGPASSWORD", "right-secret")
		if _, err := Run(t.Context(), fileRepo(t), Config{ConnString: base + " user=pwuser", UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("PGPASSFILE", func(t *testing.T) {
		pass := filepath.Join(t.TempDir(), "pgpass")
		if err := os.WriteFile(pass, fmt.Appendf(nil, "127.0.0.1:%d:*:pwuser:right-secret\n", c.Port()), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PGPASSFILE", pass)
		if _, err := Run(t.Context(), fileRepo(t), Config{ConnString: base + " user=pwuser", UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
			t.Fatal(err)
		}
	})
	_, err := Run(t.Context(), fileRepo(t), Config{ConnString: base + " user=norep", UntilCaughtUp: true, Log: testLogger(t)})
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Errorf("missing privilege gave %T, want *ConfigError", err)
	}
}

func TestServerSettingErrors(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"wal_level = minimal", "max_wal_senders = 0"}})
	_, err := Run(t.Context(), fileRepo(t), Config{ConnString: c.ConnString(), Log: testLogger(t)})
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "wal_level = replica") {
		t.Errorf("wal_level minimal: %v (%T), want a *ConfigError naming wal_level", err, err)
	}
}

func TestBusy(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"max_wal_senders = 1"}})
	repo := fileRepo(t)
	stop := background(t, repo, testConfig(t, c))
	waitFor(t, "the first archiver", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication") == "1"
	})
	// Another client finds every sender in use; a bounded run says so.
	other := Config{ConnString: c.ConnString(), Slot: "other", UntilCaughtUp: true, Log: testLogger(t)}
	if _, err := Run(t.Context(), fileRepo(t), other); err == nil || !strings.Contains(err.Error(), "max_wal_senders") {
		t.Errorf("senders exhausted: %v", err)
	}
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}

	// The same slot in use elsewhere.
	c2 := pgtest.Start(t, pgtest.Options{})
	stop = background(t, fileRepo(t), testConfig(t, c2))
	waitFor(t, "the first archiver", func() bool {
		return c2.Scalar(t, "SELECT count(*) FROM pg_replication_slots WHERE active") == "1"
	})
	_, err := Run(t.Context(), fileRepo(t), Config{ConnString: c2.ConnString(), UntilCaughtUp: true, Log: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "is using the slot") {
		t.Errorf("slot active elsewhere: %v", err)
	}
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestReconnect kills the archiver's walsender under a write load: the
// archiver reconnects and the repository has no gap.
func TestReconnect(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	stop := background(t, repo, testConfig(t, c))
	for i := 0; i < 3; i++ {
		waitFor(t, "the archiver to stream", func() bool {
			return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication") == "1"
		})
		workload(t, c, 3000)
		c.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
	}
	workload(t, c, 1000)
	target := flushLSN(t, c)
	res := stopCaughtUp(t, c, target, stop, nil)
	complete, pieces := segmentsIn(t, repo, 1<<20)
	checkContinuous(t, complete, pieces)
	dir := fetchAll(t, repo, 1, 1<<20)
	waldump(t, dir, 1, complete[0].Start(1<<20), res.Durable)
}

// TestSlotInvalidated lets the primary drop WAL the slot held: the
// archiver refuses to go on as if the repository were continuous.
func TestSlotInvalidated(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"max_slot_wal_keep_size = 2MB"}})
	repo := fileRepo(t)
	for range 2 {
		if _, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
			t.Fatal(err)
		}
		workload(t, c, 3000)
		c.Exec(t, "SELECT pg_switch_wal()")
	}
	if _, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		workload(t, c, 3000)
		c.Exec(t, "SELECT pg_switch_wal()")
		c.Exec(t, "CHECKPOINT")
	}
	waitFor(t, "the slot to be invalidated", func() bool {
		return c.Scalar(t, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walship'") == "lost"
	})
	start := time.Now()
	_, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), Log: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "gap") {
		t.Fatalf("invalidated slot: %v, want an error about the gap", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("the archiver retried an invalidated slot for %s instead of stopping", time.Since(start))
	}
	if !strings.Contains(err.Error(), "--accept-gap") {
		t.Errorf("the error does not say how to go on: %v", err)
	}
	// The operator accepts the gap: drop the dead slot, archive again.
	c.Exec(t, "SELECT pg_drop_replication_slot('walship')")
	before, _ := segmentsIn(t, repo, 1<<20)
	if _, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, AcceptGap: true, Log: testLogger(t)}); err != nil {
		t.Fatalf("--accept-gap: %v", err)
	}
	// Later runs resume after the gap, without --accept-gap.
	for i := 0; i < 2; i++ {
		workload(t, c, 3000)
		c.Exec(t, "SELECT pg_switch_wal()")
		if _, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
			t.Fatalf("run %d after the gap: %v", i, err)
		}
	}
	after, _ := segmentsIn(t, repo, 1<<20)
	if len(after) <= len(before) {
		t.Fatalf("no new segments after accepting the gap")
	}
	last := before[len(before)-1]
	next := after[len(before)]
	if next.No == last.No+1 {
		t.Errorf("segment %d follows %d: the gap was papered over", next.No, last.No)
	}
	if _, err := repo.Store().Stat(t.Context(), catalog.GapKey(next, 1<<20)); err != nil {
		t.Errorf("no gap marker where the WAL resumes (%s): %v", next.Name(1<<20), err)
	}
}

// TestOneArchiverPerRepository: a second archiver on the same repository is
// refused with an error naming the holder, waits with WaitForLease, and
// takes over at once after a clean stop.
func TestOneArchiverPerRepository(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	stop := background(t, repo, testConfig(t, c))
	waitFor(t, "the first archiver", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication") == "1"
	})
	second := Config{ConnString: c.ConnString(), Slot: "second", UntilCaughtUp: true, Log: testLogger(t)}
	_, err := Run(t.Context(), repo, second)
	var held *lease.HeldError
	if !errors.As(err, &held) || held.Holder == "" || !strings.Contains(err.Error(), held.Holder) {
		t.Fatalf("second archiver: %v, want a *lease.HeldError naming the holder", err)
	}
	second.WaitForLease = true
	waited := make(chan error, 1)
	go func() {
		_, err := Run(t.Context(), repo, second)
		waited <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("waiting archiver: %v", err)
	}
}

// failingStore fails the writes of WAL objects, as a store with wrong
// credentials or no space would.
type failingStore struct {
	storage.Store
	err error
}

func (f failingStore) Put(ctx context.Context, key string, r io.Reader) error {
	if strings.HasPrefix(key, "wal/") {
		return f.err
	}
	return f.Store.Put(ctx, key, r)
}

func (f failingStore) Create(ctx context.Context, key string, r io.Reader) error {
	if strings.HasPrefix(key, "wal/") {
		return f.err
	}
	return f.Store.(storage.Creator).Create(ctx, key, r)
}

// TestStorageFailure: a bounded run whose uploads keep failing ends with the
// storage error instead of retrying forever, and acknowledges nothing.
func TestStorageFailure(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	workload(t, c, 2000)
	boom := errors.New("access denied (test)")
	repo := catalog.New(failingStore{Store: fileRepo(t).Store(), err: boom}, catalog.Options{})
	c.Exec(t, "SELECT pg_create_physical_replication_slot('walship', true)")
	before := slotOrZero(t, c)
	_, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t), retryBase: time.Millisecond})
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the storage error", err)
	}
	if after := slotOrZero(t, c); after > before {
		t.Errorf("the slot moved from %s to %s although nothing was stored", before, after)
	}
}

func slotOrZero(t *testing.T, c *pgtest.Cluster) wal.LSN {
	v := c.Scalar(t, "SELECT coalesce((SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship'), '0/0')")
	if v == "" {
		return 0
	}
	lsn, _ := wal.ParseLSN(v)
	return lsn
}
