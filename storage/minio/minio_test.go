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

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		srv := miniotest.Start(t)
		s, err := minio.New(minio.Config{
			Endpoint:    srv.Endpoint,
			Bucket:      srv.Bucket(t),
			Prefix:      "repo/one",
			Region:      "us-east-1",
			Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
