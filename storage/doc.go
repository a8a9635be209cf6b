// Package storage defines Store, the small streaming contract between walship
// and any object store, and the rules every backend keeps.
//
// Keys are slash-separated relative paths ("wal/00000001/000000010000000000000001.zst").
// Each segment is non-empty, is not "." or "..", does not start with a dot
// (names starting with a dot are reserved for a backend's temporary files) and
// holds no control characters. No key is another key followed by "/" and more
// (a file system cannot hold both "a" and "a/b"), so layouts give objects and
// groups distinct names. List returns keys in byte-wise lexical order, so
// that fixed-width names list in logical order.
//
// Objects appear atomically: a reader sees either no object or the whole of
// it, never a partial one, and a failed or cancelled Put leaves nothing
// visible. A write whose process is killed may still leave a leftover that
// takes space (a temporary file, an incomplete multipart upload); backends
// that can find them implement Sweeper. Integrity of the bytes themselves is the codec's job
// (storage/codec); a store only moves them.
package storage
