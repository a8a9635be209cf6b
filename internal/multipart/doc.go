// Package multipart streams a reader of unknown length into an S3-style
// multipart upload with a bounded number of part buffers in flight, sending
// an object that fits in one part as a single request.
package multipart
