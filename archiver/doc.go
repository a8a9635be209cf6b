// Package archiver streams WAL from a PostgreSQL primary's physical
// replication slot into the repository and takes base backups through
// BASE_BACKUP. It acknowledges to PostgreSQL only what the repository holds.
//
// It is built in the archiver issue; this foundation provides the storage,
// codec and test services it stands on.
package archiver
