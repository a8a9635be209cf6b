// Package catalog owns the repository's layout: which key holds what, the
// repository's own description (walship.json), and reading and writing
// objects through the codec.
//
// Layout under the store's root:
//
//	walship.json                                  format, system identifier, segment size (plain JSON)
//	wal/TTTTTTTT.history                          timeline TTTTTTTT's history file
//	wal/TTTTTTTT/<segment>                        a complete segment
//	wal/TTTTTTTT/<segment>.pieces/SSSSSSSS-EEEEEEEE  bytes [S, E) of a segment still filling
//	wal/TTTTTTTT/<segment>.idx                    the segment's commit-time index (index.go)
//	wal/TTTTTTTT/<segment>.partial                a segment cut short by a timeline switch
//	wal/TTTTTTTT/<segment>.OOOOOOOO.backup        a backup history file (from wal-push)
//	wal/TTTTTTTT/<segment>.gap                    WAL before <segment> was lost (an accepted gap), JSON
//	locks/archiver/GGGGGGGGGGGGGGGG               generation G (16 hex digits) of the archiver lease (plain JSON)
//	locks/backup/GGGGGGGGGGGGGGGG                 the lease of a backup or prune
//	backups/<id>/base.tar, base.N.tar             the data directory's archive, in parts (each a tar archive)
//	backups/<id>/<oid>.tar, <oid>.N.tar           a tablespace's archive, in parts
//	backups/<id>/backup_manifest                  the server's manifest
//	backups/<id>/backup.json                      written last: the backup exists once it does (format 1, or 2 with parts)
//
// TTTTTTTT is the timeline in 8 upper-case hex digits and <segment> PostgreSQL's
// 24-digit segment name, so that listings come in WAL order. Every object but
// walship.json and the lease goes through storage/codec, which records its compression,
// encryption and sha256.
package catalog
