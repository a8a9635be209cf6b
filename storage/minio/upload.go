package minio

import (
	"context"
	"io"

	mgo "github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/multipart"
)

// target is one object being uploaded. minio-go's own streaming PutObject
// turns every object of unknown length into a multipart upload and drops
// If-None-Match when completing one, so the parts are driven here.
type target struct {
	s    *Store
	key  string
	opts mgo.PutObjectOptions // If-None-Match for Create
}

var _ multipart.Target[mgo.CompletePart] = target{}

// Payloads go unsigned (UNSIGNED-PAYLOAD): minio-go's chunk-signed streaming
// halves throughput and doubles memory, while TLS protects the bytes in
// transit and every object carries its own sha256 (storage/codec).
func (t target) Single(ctx context.Context, body *io.SectionReader) error {
	opts := t.opts
	opts.DisableContentSha256 = true
	_, err := t.s.client.PutObject(ctx, t.s.bucket, t.key, body, body.Size(), "", "", opts)
	return err
}

func (t target) Begin(ctx context.Context) (multipart.Upload[mgo.CompletePart], error) {
	id, err := t.s.client.NewMultipartUpload(ctx, t.s.bucket, t.key, mgo.PutObjectOptions{})
	if err != nil {
		return nil, err
	}
	return upload{target: t, id: id}, nil
}

type upload struct {
	target
	id string
}

func (u upload) Part(ctx context.Context, n int32, body *io.SectionReader) (mgo.CompletePart, error) {
	p, err := u.s.client.PutObjectPart(ctx, u.s.bucket, u.key, u.id, int(n), body, body.Size(), mgo.PutObjectPartOptions{DisableContentSha256: true})
	if err != nil {
		return mgo.CompletePart{}, err
	}
	return mgo.CompletePart{PartNumber: int(n), ETag: p.ETag}, nil
}

func (u upload) Complete(ctx context.Context, parts []mgo.CompletePart) error {
	_, err := u.s.client.CompleteMultipartUpload(ctx, u.s.bucket, u.key, u.id, parts, u.opts)
	return err
}

func (u upload) Abort(ctx context.Context) error {
	return u.s.client.AbortMultipartUpload(ctx, u.s.bucket, u.key, u.id)
}
