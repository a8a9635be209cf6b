package s3

import (
	"context"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/walship/walship/internal/multipart"
)

// target is one object being uploaded; ifNoneMatch makes it conditional.
type target struct {
	s           *Store
	key         string
	ifNoneMatch *string
}

var _ multipart.Target[types.CompletedPart] = target{}

func (t target) Single(ctx context.Context, body *io.SectionReader) error {
	_, err := t.s.client.PutObject(ctx, &awss3.PutObjectInput{
		Bucket:        &t.s.bucket,
		Key:           &t.key,
		Body:          body,
		ContentLength: aws.Int64(body.Size()),
		IfNoneMatch:   t.ifNoneMatch,
	})
	return translate(err)
}

func (t target) Begin(ctx context.Context) (multipart.Upload[types.CompletedPart], error) {
	in := &awss3.CreateMultipartUploadInput{Bucket: &t.s.bucket, Key: &t.key}
	if t.s.checksum == ChecksumWhenSupported {
		in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
	}
	out, err := t.s.client.CreateMultipartUpload(ctx, in)
	if err != nil {
		return nil, translate(err)
	}
	return upload{target: t, id: out.UploadId}, nil
}

type upload struct {
	target
	id *string
}

func (u upload) Part(ctx context.Context, n int32, body *io.SectionReader) (types.CompletedPart, error) {
	in := &awss3.UploadPartInput{
		Bucket:        &u.s.bucket,
		Key:           &u.key,
		UploadId:      u.id,
		PartNumber:    aws.Int32(n),
		Body:          body,
		ContentLength: aws.Int64(body.Size()),
	}
	if u.s.checksum == ChecksumWhenSupported {
		in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
	}
	out, err := u.s.client.UploadPart(ctx, in)
	if err != nil {
		return types.CompletedPart{}, err
	}
	return types.CompletedPart{PartNumber: aws.Int32(n), ETag: out.ETag, ChecksumCRC32: out.ChecksumCRC32}, nil
}

func (u upload) Complete(ctx context.Context, parts []types.CompletedPart) error {
	_, err := u.s.client.CompleteMultipartUpload(ctx, &awss3.CompleteMultipartUploadInput{
		Bucket:          &u.s.bucket,
		Key:             &u.key,
		UploadId:        u.id,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		IfNoneMatch:     u.ifNoneMatch,
	})
	return translate(err)
}

func (u upload) Abort(ctx context.Context) error {
	_, err := u.s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{
		Bucket: &u.s.bucket, Key: &u.key, UploadId: u.id,
	})
	return err
}
