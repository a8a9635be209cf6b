// Package restore rebuilds a data directory from the repository: it picks the
// backup for a recovery target, extracts it safely, writes recovery settings
// and serves WAL to PostgreSQL's restore_command.
//
// It is built in the restore issue.
package restore
