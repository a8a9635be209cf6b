package archiver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serverCert issues a certificate for localhost and 127.0.0.1, PEM encoded
// with its key.
func (ca testCA) serverCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// TestTLSVerifyFull archives over TLS with sslmode=verify-full against a
// test CA, the server refusing connections without TLS; a client trusting
// another CA, or asking a name the certificate does not hold, is refused
// with an error about the certificate.
func TestTLSVerifyFull(t *testing.T) {
	ca, other := newTestCA(t, "walship test CA"), newTestCA(t, "another CA")
	certs := pgtest.MkdirOwned(t)
	certPEM, keyPEM := ca.serverCert(t)
	files := map[string][]byte{"server.crt": certPEM, "server.key": keyPEM, "ca.pem": ca.pem, "other.pem": other.pem}
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
