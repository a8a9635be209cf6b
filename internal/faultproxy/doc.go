// Package faultproxy puts an HTTP proxy in front of an S3-compatible server
// (MinIO in the tests) that injects the faults object storage shows in
// production, on the wire, so that the real S3 clients (aws-sdk-go-v2 and
// minio-go) see them as they would: connection resets before or after the
// server acted on a request, 500 InternalError and 503 SlowDown answers with
// S3's XML error bodies, added latency, response bodies cut short under an
// intact Content-Length, and request bodies cut short on the way to the
// server. Rules pick requests by operation (put, get, head, list, delete)
// and key, and fault every n-th of them.
//
// The proxy also records every object write the server accepted, as the
// sha256 of the object's bytes, so that a test can check that no key was
// ever stored with two different contents. Only tests import it.
//
// Requests are path-style (http://host:port/bucket/key), as both clients
// send them to a custom endpoint; the proxy forwards them with their Host
// header unchanged, so that the server checks the clients' signatures
// against the proxy's address, which they signed.
package faultproxy
