package archiver

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/tcpproxy"
)

// TestConnectTimeout: a path to the primary that accepts connections but
// moves no bytes fails a bounded run within the connection timeout (the
// default, or connect_timeout of the connection string) instead of hanging
// it; once bytes move again, the next run archives.
func TestConnectTimeout(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	pgnet := tcpproxy.Start(t, fmt.Sprintf("127.0.0.1:%d", c.Port()))
	via := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", pgnet.Port())
	repo := fileRepo(t)
	pgnet.Stall()

	old := defaultConnectTimeout
	defaultConnectTimeout = time.Second
	t.Cleanup(func() { defaultConnectTimeout = old })
	for _, tc := range []struct{ name, conn string }{
		{"default", via},
		{"connect_timeout", via + " connect_timeout=1"},
	} {
		if tc.name == "connect_timeout" {
			defaultConnectTimeout = time.Hour
		}
		start := time.Now()
		_, err := Run(t.Context(), repo, Config{ConnString: tc.conn, UntilCaughtUp: true, Log: testLogger(t)})
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("%s: a run through a stalled path: %v, want a timeout", tc.name, err)
		}
		if took > 30*time.Second {
			t.Errorf("%s: the run took %s to give up", tc.name, took)
		}
		t.Logf("%s: gave up after %s: %v", tc.name, took.Round(time.Millisecond), err)
	}
	pgnet.Resume()
	if _, err := Run(t.Context(), repo, Config{ConnString: via, UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
		t.Fatalf("after the path works again: %v", err)
	}
}
