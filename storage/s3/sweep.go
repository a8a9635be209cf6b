package s3

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/walship/walship/storage"
)

var _ storage.Sweeper = (*Store)(nil)

// Sweep implements storage.Sweeper. The leftovers are the multipart uploads
// initiated before cutoff and never completed or aborted (their process
// died): they are aborted, which frees their parts. Uploads are listed
// across the bucket and picked here by key, because MinIO lists uploads
// only under an object's exact key, or all of a bucket's for an empty
// prefix.
func (s *Store) Sweep(ctx context.Context, prefix string, cutoff time.Time, remove func(storage.Leftover) bool) error {
	p := awss3.NewListMultipartUploadsPaginator(s.client, &awss3.ListMultipartUploadsInput{Bucket: &s.bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("sweep %s: list multipart uploads: %w", prefix, err)
		}
		for _, u := range page.Uploads {
			key, started := aws.ToString(u.Key), aws.ToTime(u.Initiated)
			if !strings.HasPrefix(key, s.prefix+prefix) || !started.Before(cutoff) {
				continue
			}
			l := storage.Leftover{Key: strings.TrimPrefix(key, s.prefix), ID: aws.ToString(u.UploadId), Time: started}
			if !remove(l) {
				continue
			}
			_, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
			var ae smithy.APIError
			if err != nil && !(errors.As(err, &ae) && ae.ErrorCode() == "NoSuchUpload") {
				return fmt.Errorf("sweep: abort the upload of %s: %w", l.Key, err)
			}
		}
	}
	return nil
}
