// Package benchenv sets up what the benchmark programs under bench/ share:
// a throwaway PostgreSQL 15 cluster run as the postgres user, a MinIO server
// that speaks HTTPS only with a certificate from a throwaway CA, Debian's
// peers (pgBackRest, barman-cli-cloud), and the accounting of a child's
// wall and CPU time and peak memory, read from rusage and /proc.
//
// It owns no format. Everything it starts is stopped by the Stop methods,
// which run after an interrupt too; the programs call it as root.
package benchenv
