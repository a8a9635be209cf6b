// Package location parses repository URLs and opens the store they name.
//
// The forms are:
//
//	file:///absolute/path
//	s3://bucket[/prefix][?endpoint=URL&region=R&path-style=true|false&checksum=when_supported|when_required&part-size=SIZE&concurrency=N]
//	minio://host[:port]/bucket[/prefix][?secure=true|false&region=R&part-size=SIZE&concurrency=N]
//
// Credentials never go in the URL: s3 takes them from the AWS chain, minio
// from the AWS_* or MINIO_* variables, the clients' files or IAM roles.
package location
