package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/walship/walship/internal/multipart"
	"github.com/walship/walship/storage"
)

var (
	_ storage.Store   = (*Store)(nil)
	_ storage.Creator = (*Store)(nil)
)

// Checksum selects when the SDK adds request checksums and validates
// response checksums. AWS accepts both modes; many S3-compatible servers
// reject the trailing checksums that WhenSupported sends.
type Checksum string

const (
	// ChecksumWhenSupported adds CRC32 checksums to every upload and checks
	// them on download (the AWS default).
	ChecksumWhenSupported Checksum = "when_supported"
	// ChecksumWhenRequired sends checksums only where an API demands them.
	ChecksumWhenRequired Checksum = "when_required"
)

// Config says where the store is and how to talk to it.
type Config struct {
	Bucket string
	Prefix string // key prefix inside the bucket, without leading slash
	// Endpoint is the base URL of an S3-compatible server
	// ("http://127.0.0.1:9000"); empty means AWS.
	Endpoint  string
	Region    string // empty: from the AWS configuration, else us-east-1
	PathStyle bool   // bucket in the path instead of the host name
	// Checksum defaults to ChecksumWhenSupported for AWS and to
	// ChecksumWhenRequired for a custom endpoint.
	Checksum    Checksum
	PartSize    int64 // first multipart part size; default 8 MiB, at least 5 MiB
	Concurrency int   // parts in flight; default 4
	// Credentials, when nil, come from the standard AWS chain (environment,
	// shared files, SSO, web identity, container and instance roles).
	Credentials aws.CredentialsProvider
	HTTPClient  *http.Client // optional
}

const (
	minPartSize     = 5 << 20
	defaultPartSize = 8 << 20
)

// Store is a storage.Store in an S3 bucket.
type Store struct {
	client   *awss3.Client
	bucket   string
	prefix   string
	parts    multipart.Config
	checksum Checksum
}

// New returns a store for cfg. It does not contact the server.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket given")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = defaultPartSize
	}
	if cfg.PartSize < minPartSize {
		return nil, fmt.Errorf("s3: part size %d is below the S3 minimum of 5 MiB", cfg.PartSize)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	switch cfg.Checksum {
	case "":
		cfg.Checksum = ChecksumWhenSupported
		if cfg.Endpoint != "" {
			cfg.Checksum = ChecksumWhenRequired
		}
	case ChecksumWhenSupported, ChecksumWhenRequired:
	default:
		return nil, fmt.Errorf("s3: checksum mode %q: want %s or %s", cfg.Checksum, ChecksumWhenSupported, ChecksumWhenRequired)
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	if cfg.HTTPClient != nil {
		opts = append(opts, config.WithHTTPClient(cfg.HTTPClient))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	client := awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Multipart objects carry no whole-object checksum to validate;
		// saying so on every download is noise.
		o.DisableLogOutputChecksumValidationSkipped = true
		// Expect: 100-continue costs a round trip on every upload over
		// 2 MB, and a full second (the client's wait) against servers
		// that do not answer it, as MinIO does not.
		o.ContinueHeaderThresholdBytes = -1
		if cfg.Checksum == ChecksumWhenRequired {
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		} else {
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenSupported
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenSupported
		}
	})
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := storage.ValidKey(prefix); err != nil {
			return nil, fmt.Errorf("s3: prefix: %w", err)
		}
		prefix += "/"
	}
	return &Store{
		client:   client,
		bucket:   cfg.Bucket,
		prefix:   prefix,
		parts:    multipart.Config{PartSize: cfg.PartSize, InFlight: cfg.Concurrency},
		checksum: cfg.Checksum,
	}, nil
}

func (s *Store) key(key string) (string, error) {
	if err := storage.ValidKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

// Put implements storage.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if err := multipart.Stream(ctx, target{s: s, key: k}, r, s.parts); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Create implements storage.Creator.
func (s *Store) Create(ctx context.Context, key string, r io.Reader) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if err := multipart.Stream(ctx, target{s: s, key: k, ifNoneMatch: aws.String("*")}, r, s.parts); err != nil {
		return fmt.Errorf("create %s: %w", key, err)
	}
	return nil
}

// Get implements storage.Store.
func (s *Store) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", key, off)
	}
	in := &awss3.GetObjectInput{Bucket: &s.bucket, Key: &k}
	if off > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil && off > 0 && httpStatus(err) == http.StatusRequestedRangeNotSatisfiable {
		if rc, ok := storage.EmptyAtEnd(ctx, s, key, off); ok {
			return rc, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, translate(err))
	}
	return out.Body, nil
}

// Stat implements storage.Store.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, translate(err))
	}
	return storage.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// Delete implements storage.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil && !errors.Is(translate(err), storage.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List implements storage.Store.
func (s *Store) List(ctx context.Context, prefix string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		p := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{
			Bucket: &s.bucket,
			Prefix: aws.String(s.prefix + prefix),
		})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				yield(storage.ObjectInfo{}, fmt.Errorf("list %s: %w", prefix, translate(err)))
				return
			}
			for _, o := range page.Contents {
				oi := storage.ObjectInfo{
					Key:     strings.TrimPrefix(aws.ToString(o.Key), s.prefix),
					Size:    aws.ToInt64(o.Size),
					ModTime: aws.ToTime(o.LastModified),
				}
				if !yield(oi, nil) {
					return
				}
			}
		}
	}
}

// translate maps S3's "no such key" to storage.ErrNotExist and a failed
// If-None-Match to storage.ErrExist, keeping the original error's text.
func translate(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("%w (%v)", storage.ErrNotExist, err)
		case "PreconditionFailed":
			return fmt.Errorf("%w (%v)", storage.ErrExist, err)
		}
	}
	return err
}

func httpStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}
