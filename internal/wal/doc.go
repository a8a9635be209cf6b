// Package wal is PostgreSQL's WAL vocabulary: log sequence numbers, timeline
// IDs, segment numbers and the file names PostgreSQL gives segments, history
// files and partial segments, and the timeline history format.
//
// A segment file name is 24 upper-case hex digits: the timeline, then the
// segment number split into "log" and "seg" halves of 8 digits each, where a
// log holds 0x100000000 / segment size segments. A history file is
// "TTTTTTTT.history" and holds one line per ancestor timeline:
// "parentTLI<TAB>switchLSN<TAB>reason", with # comments.
package wal
