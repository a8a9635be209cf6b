// Package s3 implements storage.Store on Amazon S3 and S3-compatible servers
// with aws-sdk-go-v2.
//
// Keys live under an optional prefix in one bucket. Uploads stream: an object
// that fits in one part is sent with a single PutObject; a larger one goes up
// as a multipart upload with a bounded number of part buffers in flight, and
// is aborted on any failure, so that a failed upload never shows an object.
// Conditional creation uses If-None-Match: * on PutObject or on
// CompleteMultipartUpload. A process killed mid-upload leaves an incomplete
// multipart upload, which Sweep aborts once it is older than a cut-off.
package s3
