package miniotest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mgo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The variables through which a test run shares one server with every test
// binary (see scripts/with-minio.sh).
const (
	EnvEndpoint = "WALSHIP_TEST_MINIO_ENDPOINT" // host:port
	EnvUser     = "WALSHIP_TEST_MINIO_USER"
	EnvPassword = "WALSHIP_TEST_MINIO_PASSWORD"
	EnvBinary   = "WALSHIP_MINIO" // path of the minio binary
)

// Server is a running MinIO server.
type Server struct {
	Endpoint  string // host:port
	AccessKey string
	SecretKey string

	cmd   *exec.Cmd
	dir   string
	roots *x509.CertPool // with TLS: what the server's certificate chains to
}

// URL is the server's base URL.
func (s *Server) URL() string {
	if s.roots != nil {
		return "https://" + s.Endpoint
	}
	return "http://" + s.Endpoint
}

var (
	once    sync.Once
	shared  *Server
	initErr error
)

// Start returns the shared server, starting one for this test binary when the
// test run did not provide it.
func Start(t testing.TB) *Server {
	t.Helper()
	once.Do(func() { shared, initErr = startShared() })
	if initErr != nil {
		t.Fatalf("minio: %v", initErr)
	}
	return shared
}

// Main runs the tests and then stops a server this binary started; use it
// from TestMain as os.Exit(miniotest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	Cleanup()
	return code
}

// Cleanup stops the server this binary started, if any; call it from TestMain
// after m.Run when Main does not fit (a package that also uses pgtest).
func Cleanup() {
	if shared != nil {
		shared.Stop()
	}
}

// Stop stops a server that New started and removes its data; on a shared
// server it does nothing.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	_ = os.RemoveAll(s.dir)
	s.cmd = nil
}

// Env is the environment that makes test binaries share this server.
func (s *Server) Env() []string {
	return []string{EnvEndpoint + "=" + s.Endpoint, EnvUser + "=" + s.AccessKey, EnvPassword + "=" + s.SecretKey}
}

func startShared() (*Server, error) {
	if ep := os.Getenv(EnvEndpoint); ep != "" {
		return &Server{Endpoint: ep, AccessKey: os.Getenv(EnvUser), SecretKey: os.Getenv(EnvPassword)}, nil
	}
	return New()
}

// New starts a MinIO server of its own on a free loopback port, with its
// data in a temporary directory. The server dies with this process.
func New() (*Server, error) { return newServer(nil, nil, nil) }

// NewTLS starts a server of its own that speaks HTTPS only, with the
// certificate and key given (PEM), which chain to roots. Stop it when done.
func NewTLS(certPEM, keyPEM []byte, roots *x509.CertPool) (*Server, error) {
	return newServer(certPEM, keyPEM, roots)
}

func newServer(certPEM, keyPEM []byte, roots *x509.CertPool) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "walship-minio-")
	if err != nil {
		return nil, err
	}
	s := &Server{AccessKey: "walship", SecretKey: randomHex(16), dir: dir, roots: roots}
	certsDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certsDir, 0o700); err != nil {
		return nil, err
	}
	if certPEM != nil {
		if err := os.WriteFile(filepath.Join(certsDir, "public.crt"), certPEM, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(certsDir, "private.key"), keyPEM, 0o600); err != nil {
			return nil, err
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.Endpoint = fmt.Sprintf("127.0.0.1:%d", port)
	s.cmd = exec.Command(bin, "server", "--quiet", "--certs-dir", certsDir, "--address", s.Endpoint, "--console-address", "127.0.0.1:0", filepath.Join(dir, "data"))
	s.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey, "MINIO_BROWSER=off", "MINIO_UPDATE=off")
	log, err := os.Create(filepath.Join(dir, "minio.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if err := waitReady(s.URL(), s.httpClient(), 30*time.Second); err != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		out, _ := os.ReadFile(log.Name())
		return nil, fmt.Errorf("%w; server log:\n%s", err, out)
	}
	return s, nil
}

// Binary finds the minio binary that scripts/install-minio.sh builds.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		return p, nil
	}
	p := filepath.Join(CacheDir(), "minio", "bin", "minio")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no minio binary at %s: run `make services` (scripts/install-minio.sh) or set %s", p, EnvBinary)
	}
	return p, nil
}

// CacheDir is where test services are cached outside the clone:
// $WALSHIP_CACHE, else $XDG_CACHE_HOME/walship, else ~/.cache/walship.
func CacheDir() string {
	if d := os.Getenv("WALSHIP_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "walship")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "walship")
}

// httpClient is a client that trusts the server's certificate.
func (s *Server) httpClient() *http.Client {
	return &http.Client{Transport: s.transport()}
}

func (s *Server) transport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if s.roots != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: s.roots}
	}
	return t
}

func waitReady(url string, client *http.Client, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := client.Get(url + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("minio at %s not ready after %s", url, timeout)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Client returns a minio-go client for the server, for test set-up.
func (s *Server) Client(t testing.TB) *mgo.Client {
	t.Helper()
	c, err := mgo.New(s.Endpoint, &mgo.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Secure: s.roots != nil, Transport: s.transport()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Bucket creates a bucket for this test alone and empties and removes it when
// the test ends.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	c := s.Client(t)
	name := "t-" + strings.ToLower(randomHex(8))
	ctx := context.Background()
	if err := c.MakeBucket(ctx, name, mgo.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket: %v", err)
	}
	t.Cleanup(func() {
		objs := c.ListObjects(ctx, name, mgo.ListObjectsOptions{Recursive: true})
		for e := range c.RemoveObjects(ctx, name, objs, mgo.RemoveObjectsOptions{}) {
			t.Logf("clean bucket %s: %v", name, e.Err)
		}
		for u := range c.ListIncompleteUploads(ctx, name, "", true) {
			_ = c.RemoveIncompleteUpload(ctx, name, u.Key)
		}
		if err := c.RemoveBucket(ctx, name); err != nil {
			t.Logf("remove bucket %s: %v", name, err)
		}
	})
	return name
}
