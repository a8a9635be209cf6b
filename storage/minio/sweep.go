package minio

import (
	"context"
	"fmt"
	"strings"
	"time"

	mgo "github.com/minio/minio-go/v7"

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
	var keyMarker, idMarker string
	for {
		res, err := s.client.ListMultipartUploads(ctx, s.bucket, "", keyMarker, idMarker, "", 1000)
		if err != nil {
			return fmt.Errorf("sweep %s: list multipart uploads: %w", prefix, err)
		}
		for _, u := range res.Uploads {
			if !strings.HasPrefix(u.Key, s.prefix+prefix) || !u.Initiated.Before(cutoff) {
				continue
			}
			l := storage.Leftover{Key: strings.TrimPrefix(u.Key, s.prefix), ID: u.UploadID, Time: u.Initiated}
			if !remove(l) {
				continue
			}
			err := s.client.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID)
			if err != nil && mgo.ToErrorResponse(err).Code != "NoSuchUpload" {
				return fmt.Errorf("sweep: abort the upload of %s: %w", l.Key, err)
			}
		}
		if !res.IsTruncated || (res.NextKeyMarker == keyMarker && res.NextUploadIDMarker == idMarker) {
			return nil
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
}
