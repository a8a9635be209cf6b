package s3_test

import (
	"os"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/s3"
	"github.com/walship/walship/storage/storagetest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.Main(m)) }

func newStore(t *testing.T, checksum s3.Checksum) storage.Store {
	srv := miniotest.Start(t)
	s, err := s3.New(t.Context(), s3.Config{
		Bucket:      srv.Bucket(t),
		Prefix:      "repo/one",
		Endpoint:    srv.URL(),
		Region:      "us-east-1",
		PathStyle:   true,
		Checksum:    checksum,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t, s3.ChecksumWhenRequired) }, storagetest.ListingMayMissReplaced())
}

// TestConformanceChecksums runs the suite with the SDK's CRC32 checksums on
// single and multipart uploads, as AWS itself takes them.
func TestConformanceChecksums(t *testing.T) {
	storagetest.RunBehaviour(t, func(t *testing.T) storage.Store { return newStore(t, s3.ChecksumWhenSupported) }, storagetest.ListingMayMissReplaced())
}

func BenchmarkSDKAgainstMinIO(b *testing.B) {
	srv := miniotest.Start(b)
	s, err := s3.New(b.Context(), s3.Config{
		Bucket:      srv.Bucket(b),
		Endpoint:    srv.URL(),
		Region:      "us-east-1",
		PathStyle:   true,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		b.Fatal(err)
	}
	storagetest.Bench(b, s)
}
