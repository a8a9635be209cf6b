// Package progress shows how far a long job (a backup, a restore) has come:
// on a terminal as one status line redrawn in place, with bytes, rate and
// time left; otherwise as a log line now and then, for log collectors.
package progress
