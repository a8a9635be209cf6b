// Package walrec reads PostgreSQL WAL as it streams in and reports the records
// a point-in-time restore needs: commits and aborts with their times, restore
// points, promotions and the ends of online backups.
//
// WAL, PostgreSQL 14 to 18, little-endian, as PostgreSQL writes it: segments
// of pages, each page opening with a header (24 bytes, 40 on a segment's
// first page, which also gives the page and segment sizes and the system
// identifier). Records start 8-byte aligned and run across pages and
// segments; a page whose data continues a record says so
// (XLP_FIRST_IS_CONTRECORD) with the count of bytes still to come. A record
// is a 24-byte header (total length, xid, previous record's LSN, info, resource
// manager, CRC-32C), then block-reference headers, then block images and data,
// then the main data. The reader walks the headers of every record but
// assembles, CRC-checks and decodes only those it reports, and it streams even
// those, so that no record, however large, takes more memory than another.
//
// A record may begin in one segment and end in the next. A Reader made at a
// segment's start skips the rest of such a record, unless it is made from the
// Carry that the Reader of the segment before took at its end: the record's
// bytes (at most CarryMax of them, page headers included) when it is of
// interest, else how many bytes of it are still to come. Carry.Append gives
// its binary form, a kind byte and uvarints; ParseCarry reads it back.
//
// A promotion writes XLOG_END_OF_RECOVERY; recovery that ends any other way,
// at a recovery target among them, writes a shutdown checkpoint instead, which
// the reader does not report: timeline history files say where timelines
// begin.
package walrec
