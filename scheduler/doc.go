// Package scheduler runs base backups, retention and verification on cron
// schedules inside a long-running archiver, and decides from the repository
// alone whether a backup is due.
//
// It is built in the backups issue.
package scheduler
