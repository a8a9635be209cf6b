// Package minio implements storage.Store on S3-compatible servers with
// minio-go v7, an alternative to storage/s3 for servers and networks where
// minio-go's client behaves better.
//
// Keys live under an optional prefix in one bucket. Uploads stream in parts of
// a bounded size; conditional creation sends If-None-Match: *. A process
// killed mid-upload leaves an incomplete multipart upload, which Sweep aborts
// once it is older than a cut-off.
package minio
