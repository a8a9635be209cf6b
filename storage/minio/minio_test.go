package minio_test

import (
	"os"
	"testing"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/minio"
	"github.com/walship/walship/storage/storagetest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.Main(m)) }

func newStore(tb testing.TB) *minio.Store {
	srv := miniotest.Start(tb)
	s, err := minio.New(minio.Config{
		Endpoint:    srv.Endpoint,
		Bucket:      srv.Bucket(tb),
		Prefix:      "repo/one",
		Region:      "us-east-1",
		Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t) }, storagetest.ListingMayMissReplaced())
}

func BenchmarkMinIOGoAgainstMinIO(b *testing.B) { storagetest.Bench(b, newStore(b)) }
