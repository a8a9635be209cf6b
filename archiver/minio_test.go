package archiver

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	mcreds "github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
	"github.com/walship/walship/storage/minio"
	"github.com/walship/walship/storage/s3"
)

// objectStores are the two S3 clients against the shared MinIO.
func objectStores(t testing.TB) map[string]storage.Store {
	srv := miniotest.Start(t)
	s3s, err := s3.New(t.Context(), s3.Config{
		Bucket: srv.Bucket(t), Prefix: "pg", Endpoint: srv.URL(), Region: "us-east-1", PathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := minio.New(minio.Config{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket(t), Prefix: "pg", Region: "us-east-1",
		Credentials: mcreds.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]storage.Store{"s3": s3s, "minio": ms}
}

// TestObjectStores runs a continuous archiver against MinIO through both
// clients, stops it, and reads every shipped segment back.
func TestObjectStores(t *testing.T) {
	for name, st := range objectStores(t) {
		t.Run(name, func(t *testing.T) {
			c := pgtest.Start(t, pgtest.Options{Version: 17})
			repo := catalog.New(st, catalog.Options{Codec: codec.Options{Compression: codec.Zstd}})
			stop := background(t, repo, testConfig(t, c))
			workload(t, c, 6000)
			c.Exec(t, "SELECT pg_switch_wal()")
			workload(t, c, 1000)
			target := flushLSN(t, c)
			stopCaughtUp(t, c, target, stop, nil)
			complete, pieces := segmentsIn(t, repo, 1<<20)
			checkContinuous(t, complete, pieces)
			if len(complete) < 3 {
				t.Fatalf("only %d segments", len(complete))
			}
			fetchRange(t, repo, 1, complete[0].No, complete[len(complete)-1].No, 1<<20)
		})
	}
}
