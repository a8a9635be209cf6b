package benchenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	mgo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/miniotest"
)

// MinIO is a MinIO server of the run's own that speaks HTTPS only, with a
// certificate from a throwaway CA, and a bucket named Bucket.
type MinIO struct {
	Bucket string
	CAFile string // the CA's certificate (PEM), readable by postgres
	Pid    int    // the server's pid, for CPU accounting (0 if not found)

	srv    *miniotest.Server
	client *mgo.Client
}

// StartMinIO makes a CA, writes its certificate to dir/minio-ca.pem,
// starts the server (the binary make services builds) and creates bucket.
func StartMinIO(ctx context.Context, dir, bucket string) (*MinIO, error) {
	authority, err := newCA("walship bench CA")
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := authority.serverCert()
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "minio-ca.pem")
	if err := os.WriteFile(caFile, authority.pem, 0o644); err != nil {
		return nil, err
	}
	srv, err := miniotest.NewTLS(certPEM, keyPEM, authority.pool())
	if err != nil {
		return nil, fmt.Errorf("start minio: %w", err)
	}
	m := &MinIO{Bucket: bucket, CAFile: caFile, Pid: childNamed(os.Getpid(), "minio"), srv: srv}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: authority.pool()}
	m.client, err = mgo.New(srv.Endpoint, &mgo.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Secure: true, Transport: transport})
	if err != nil {
		srv.Stop()
		return nil, err
	}
	if err := m.client.MakeBucket(ctx, bucket, mgo.MakeBucketOptions{}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("make bucket %s: %w", bucket, err)
	}
	return m, nil
}

// Stop stops the server and removes its data.
func (m *MinIO) Stop() { m.srv.Stop() }

// Endpoint is the server's host:port.
func (m *MinIO) Endpoint() string { return m.srv.Endpoint }

// URL is the server's base URL, https://host:port.
func (m *MinIO) URL() string { return m.srv.URL() }

// Env is the environment that gives a client the server's credentials and
// makes it trust the CA: SSL_CERT_FILE for Go's TLS (walship's minio-go
// backend) and OpenSSL, AWS_CA_BUNDLE for the AWS SDKs (walship's s3
// backend, boto3 in barman-cloud).
func (m *MinIO) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + m.srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.srv.SecretKey, "AWS_REGION=us-east-1",
		"SSL_CERT_FILE=" + m.CAFile, "AWS_CA_BUNDLE=" + m.CAFile}
}

// AccessKey and SecretKey are the server's root credentials, for clients
// that take them in a configuration file (pgBackRest).
func (m *MinIO) AccessKey() string { return m.srv.AccessKey }

// SecretKey: see AccessKey.
func (m *MinIO) SecretKey() string { return m.srv.SecretKey }

// CPU is the CPU seconds the server has used so far.
func (m *MinIO) CPU() float64 { return procCPU(m.Pid, false) }

// Bytes sums the sizes of the objects under prefix in the bucket.
func (m *MinIO) Bytes(ctx context.Context, prefix string) (int64, error) {
	var n int64
	for o := range m.client.ListObjects(ctx, m.Bucket, mgo.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return 0, fmt.Errorf("list %s/%s: %w", m.Bucket, prefix, o.Err)
		}
		n += o.Size
	}
	return n, nil
}
