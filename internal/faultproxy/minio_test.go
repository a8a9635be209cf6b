package faultproxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	mgo "github.com/minio/minio-go/v7"
	mcreds "github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/miniotest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.Main(m)) }

// client is what the test needs of an S3 client.
type client struct {
	put func(ctx context.Context, key string, b []byte) error
	get func(ctx context.Context, key string) ([]byte, error)
}

// clients returns aws-sdk-go-v2 and minio-go clients of bucket through p,
// with their default retries.
func clients(t *testing.T, p *Proxy, srv *miniotest.Server, bucket string) map[string]client {
	aws3 := awss3.New(awss3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(p.URL()), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	mc, err := mgo.New(p.Endpoint(), &mgo.Options{Creds: mcreds.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]client{
		"aws": {
			put: func(ctx context.Context, key string, b []byte) error {
				_, err := aws3.PutObject(ctx, &awss3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(b), ContentLength: aws.Int64(int64(len(b)))})
				return err
			},
			get: func(ctx context.Context, key string) ([]byte, error) {
				out, err := aws3.GetObject(ctx, &awss3.GetObjectInput{Bucket: &bucket, Key: &key})
				if err != nil {
					return nil, err
				}
				defer out.Body.Close()
				return io.ReadAll(out.Body)
			},
		},
		"minio": {
			put: func(ctx context.Context, key string, b []byte) error {
				_, err := mc.PutObject(ctx, bucket, key, bytes.NewReader(b), int64(len(b)), mgo.PutObjectOptions{})
				return err
			},
			get: func(ctx context.Context, key string) ([]byte, error) {
				o, err := mc.GetObject(ctx, bucket, key, mgo.GetObjectOptions{})
				if err != nil {
					return nil, err
				}
				defer o.Close()
				return io.ReadAll(o)
			},
		},
	}
}

// TestRealClients runs both S3 clients through the proxy against MinIO:
// writes survive every fault through the clients' retries and land intact,
// reads under faults give the object's bytes or an error, never other
// bytes, and the proxy's record of writes is exact for both clients' wire
// formats.
func TestRealClients(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := srv.Bucket(t)
	p := Start(t, srv.URL())
	direct := srv.Client(t)
	ctx := t.Context()
	body := func(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("object %d;", i)), 20000) }
	for name, c := range clients(t, p, srv, bucket) {
		t.Run(name, func(t *testing.T) {
			for _, f := range []Fault{Reset, ResetAfter, InternalError, SlowDown, TruncateRequest, Truncate} {
				p.Set(Rule{Op: Put, Fault: f, Every: 2})
				for i := range 2 {
					key := fmt.Sprintf("%s/%s/%d", name, f, i)
					if err := c.put(ctx, key, body(i)); err != nil {
						t.Errorf("put %s under %s: %v", key, f, err)
						continue
					}
					o, err := direct.GetObject(ctx, bucket, key, mgo.GetObjectOptions{})
					if err != nil {
						t.Fatal(err)
					}
					got, err := io.ReadAll(o)
					o.Close()
					if err != nil || !bytes.Equal(got, body(i)) {
						t.Errorf("%s as stored: %d bytes, %v; want what was put", key, len(got), err)
					}
				}
				if n := p.Injected()[0]; n == 0 {
					t.Errorf("%s: no fault injected", f)
				}
			}
			key := name + "/read"
			p.Clear()
			if err := c.put(ctx, key, body(7)); err != nil {
				t.Fatal(err)
			}
			for _, f := range []Fault{Reset, InternalError, SlowDown, Truncate} {
				p.Set(Rule{Op: Get, Fault: f, Every: 2})
				for range 3 {
					got, err := c.get(ctx, key)
					if err == nil && !bytes.Equal(got, body(7)) {
						t.Errorf("get under %s: %d bytes without an error, want the object's %d or an error", f, len(got), len(body(7)))
					}
				}
			}
			p.Clear()
			if got := p.Overwrites(); len(got) != 0 {
				t.Errorf("the proxy saw overwrites where there were none: %v", got)
			}
			if err := c.put(ctx, key, body(8)); err != nil {
				t.Fatal(err)
			}
			if got := p.Overwrites(); len(got) != 1 {
				t.Errorf("Overwrites after replacing %s = %v, want it", key, got)
			}
		})
		// Each client's replacement is reported once; the next client
		// starts from a clean record.
		p.mu.Lock()
		p.writes = map[string][]Digest{}
		p.mu.Unlock()
	}
}
