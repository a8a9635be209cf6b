package minio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strings"

	mgo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/multipart"
	"github.com/walship/walship/storage"
)

var (
	_ storage.Store   = (*Store)(nil)
	_ storage.Creator = (*Store)(nil)
)

// Config says where the store is and how to talk to it.
type Config struct {
	Endpoint string // host:port
	Secure   bool   // HTTPS
	Bucket   string
	Prefix   string // key prefix inside the bucket
	Region   string
	// Credentials, when nil, come from the environment (AWS_* then
	// MINIO_*), the AWS and MinIO client files, then IAM roles.
	Credentials *credentials.Credentials
	PartSize    uint64 // first part size; default 8 MiB, at least 5 MiB
	Concurrency uint   // parts uploaded in parallel; default 4
	Transport   http.RoundTripper
}

// Store is a storage.Store in a bucket reached through minio-go.
type Store struct {
	client *mgo.Core
	bucket string
	prefix string
	parts  multipart.Config
}

// New returns a store for cfg. It does not contact the server.
func New(cfg Config) (*Store, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("minio: no endpoint given")
	}
	if cfg.Bucket == "" {
		return nil, errors.New("minio: no bucket given")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = 8 << 20
	}
	if cfg.PartSize < 5<<20 {
		return nil, fmt.Errorf("minio: part size %d is below the S3 minimum of 5 MiB", cfg.PartSize)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 4
	}
	creds := cfg.Credentials
	if creds == nil {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.EnvMinio{},
			&credentials.FileAWSCredentials{},
			&credentials.FileMinioClient{},
			&credentials.IAM{},
		})
	}
	c, err := mgo.NewCore(cfg.Endpoint, &mgo.Options{
		Creds:     creds,
		Secure:    cfg.Secure,
		Region:    cfg.Region,
		Transport: cfg.Transport,
	})
	if err != nil {
		return nil, fmt.Errorf("minio: %w", err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := storage.ValidKey(prefix); err != nil {
			return nil, fmt.Errorf("minio: prefix: %w", err)
		}
		prefix += "/"
	}
	return &Store{client: c, bucket: cfg.Bucket, prefix: prefix, parts: multipart.Config{PartSize: int64(cfg.PartSize), InFlight: int(cfg.Concurrency)}}, nil
}

func (s *Store) key(key string) (string, error) {
	if err := storage.ValidKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

// Put implements storage.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, "put", key, r, mgo.PutObjectOptions{})
}

// Create implements storage.Creator.
func (s *Store) Create(ctx context.Context, key string, r io.Reader) error {
	var opts mgo.PutObjectOptions
	opts.SetMatchETagExcept("*")
	return s.put(ctx, "create", key, r, opts)
}

func (s *Store) put(ctx context.Context, op, key string, r io.Reader, opts mgo.PutObjectOptions) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if err := multipart.Stream(ctx, target{s: s, key: k, opts: opts}, r, s.parts); err != nil {
		return fmt.Errorf("%s %s: %w", op, key, translate(err))
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
	var opts mgo.GetObjectOptions
	if off > 0 {
		if err := opts.SetRange(off, 0); err != nil {
			return nil, fmt.Errorf("get %s: %w", key, err)
		}
	}
	body, _, _, err := s.client.GetObject(ctx, s.bucket, k, opts)
	if err != nil && off > 0 && mgo.ToErrorResponse(err).StatusCode == http.StatusRequestedRangeNotSatisfiable {
		if rc, ok := storage.EmptyAtEnd(ctx, s, key, off); ok {
			return rc, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, translate(err))
	}
	return body, nil
}

// Stat implements storage.Store.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, k, mgo.StatObjectOptions{})
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, translate(err))
	}
	return storage.ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Delete implements storage.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, k, mgo.RemoveObjectOptions{}); err != nil {
		if errors.Is(translate(err), storage.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List implements storage.Store.
func (s *Store) List(ctx context.Context, prefix string) iter.Seq2[storage.ObjectInfo, error] {
	return func(yield func(storage.ObjectInfo, error) bool) {
		// Cancelling stops minio-go's listing goroutine on an early break.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for o := range s.client.Client.ListObjects(ctx, s.bucket, mgo.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
			if o.Err != nil {
				yield(storage.ObjectInfo{}, fmt.Errorf("list %s: %w", prefix, translate(o.Err)))
				return
			}
			oi := storage.ObjectInfo{Key: strings.TrimPrefix(o.Key, s.prefix), Size: o.Size, ModTime: o.LastModified}
			if !yield(oi, nil) {
				return
			}
		}
		if err := ctx.Err(); err != nil {
			yield(storage.ObjectInfo{}, fmt.Errorf("list %s: %w", prefix, err))
		}
	}
}

// translate maps "no such key" to storage.ErrNotExist and a failed
// If-None-Match to storage.ErrExist.
func translate(err error) error {
	switch mgo.ToErrorResponse(err).Code {
	case "NoSuchKey", "NotFound":
		return fmt.Errorf("%w (%v)", storage.ErrNotExist, err)
	case "PreconditionFailed":
		return fmt.Errorf("%w (%v)", storage.ErrExist, err)
	}
	return err
}
