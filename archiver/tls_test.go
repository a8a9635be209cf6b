package archiver

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/testca"
)

// TestTLSVerifyFull archives over TLS with sslmode=verify-full against a
// test CA, the server refusing connections without TLS; a client trusting
// another CA, or asking a name the certificate does not hold, is refused
// with an error about the certificate.
func TestTLSVerifyFull(t *testing.T) {
	ca, other := testca.New(t, "walship test CA"), testca.New(t, "another CA")
	certs := pgtest.MkdirOwned(t)
	certPEM, keyPEM := ca.ServerCert(t)
	files := map[string][]byte{"server.crt": certPEM, "server.key": keyPEM, "ca.pem": ca.PEM, "other.pem": other.PEM}
	for name, b := range files {
		p := filepath.Join(certs, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		pgtest.Own(t, p)
	}
	c := pgtest.Start(t, pgtest.Options{Conf: []string{
		"ssl = on",
		fmt.Sprintf("ssl_cert_file = '%s'", filepath.Join(certs, "server.crt")),
		fmt.Sprintf("ssl_key_file = '%s'", filepath.Join(certs, "server.key")),
	}})
	prependHBA(t, c, "hostnossl all all 127.0.0.1/32 reject\nhostnossl replication all 127.0.0.1/32 reject")
	conn := func(host, mode, root string) string {
		return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=%s sslrootcert=%s connect_timeout=5", host, c.Port(), mode, filepath.Join(certs, root))
	}
	repo := fileRepo(t)
	if _, err := Run(t.Context(), repo, Config{ConnString: conn("localhost", "verify-full", "ca.pem"), UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
		t.Fatalf("verify-full with the right CA: %v", err)
	}
	for _, tc := range []struct{ name, conn, want string }{
		{"another CA", conn("localhost", "verify-full", "other.pem"), "certificate"},
		{"without TLS", strings.Replace(conn("localhost", "disable", "ca.pem"), "sslrootcert", "x", 1), "no encryption"},
	} {
		_, err := Run(t.Context(), repo, Config{ConnString: tc.conn, UntilCaughtUp: true, Log: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v, want an error about %q", tc.name, err, tc.want)
		}
	}
}
