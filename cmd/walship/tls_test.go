package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/testca"
)

// TestMinIOTLS runs check against a MinIO server that speaks HTTPS only,
// with a certificate from a test CA, through both S3 clients: trusted
// through SSL_CERT_FILE (Go's TLS, minio-go) and AWS_CA_BUNDLE (the AWS
// SDK), it passes; without them the certificate is refused.
func TestMinIOTLS(t *testing.T) {
	bin := clitest.Binary(t)
	ca := testca.New(t, "walship test CA")
	certPEM, keyPEM := ca.ServerCert(t)
	srv, err := miniotest.NewTLS(certPEM, keyPEM, ca.Pool())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	bucket := srv.Bucket(t)
	creds := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "AWS_REGION=us-east-1", "HOME=" + t.TempDir()}
	trust := []string{"SSL_CERT_FILE=" + caFile, "AWS_CA_BUNDLE=" + caFile}
	for name, repo := range map[string]string{
		"s3":    "s3://" + bucket + "/s3?endpoint=" + srv.URL(),
		"minio": "minio://" + srv.Endpoint + "/" + bucket + "/minio?secure=true",
	} {
		t.Run(name, func(t *testing.T) {
			run := func(env []string) (string, error) {
				cmd := exec.Command(bin, "--repo", repo, "check")
				cmd.Env = env
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			if out, err := run(append(creds, trust...)); err != nil || !strings.Contains(out, "all checks passed") {
				t.Errorf("check over TLS with the CA trusted: %v\n%s", err, out)
			}
			out, err := run(creds)
			if err == nil || !strings.Contains(out, "certificate") {
				t.Errorf("check over TLS without trusting the CA: %v, want a certificate error\n%s", err, out)
			}
		})
	}
}
