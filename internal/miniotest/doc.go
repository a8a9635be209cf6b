// Package miniotest gives tests a real MinIO server: the one a test run
// started (named by WALSHIP_TEST_MINIO_* variables) or, failing that, one
// started once per test binary, with a fresh bucket per test.
package miniotest
