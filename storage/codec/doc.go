// Package codec encodes every object walship stores as a self-describing,
// checksummed stream: optionally zstd-compressed, optionally age-encrypted.
//
// Each object records how it was written, so changing the compression or the
// encryption settings later never makes old objects unreadable, and every
// object carries the sha256 of its stored bytes, so that it can be verified
// without the decryption identity.
//
// # Stored format, version 1
//
// An object is a header, a body and a trailer, in that order:
//
//	offset  size  field
//	0       4     magic "WSO\x01": "WSO" then the format version, 1
//	4       1     compression: 0 none, 1 zstd
//	5       1     encryption: 0 none, 1 age
//	6       2     reserved, zero
//	8       n     body
//	8+n     8     payload length: the uncompressed, unencrypted length, uint64 big-endian
//	16+n    32    sha256 of every byte before it: header, body and payload length
//
// The body is the payload, compressed and then encrypted as the header says.
// Compressed, it is exactly one zstd frame (RFC 8878) with its content
// checksum; this version writes windows of at most 8 MiB and reads windows
// of up to 32 MiB. Encrypted, it is one binary age v1 file
// (age-encryption.org/v1) to one or more recipients. Nothing may follow the
// zstd frame inside the age file, nor the age file inside the body. With
// neither, the body is the payload itself.
//
// Because the checksum covers everything before it, a person can check an
// object with standard tools: the last 32 bytes equal the sha256 of all the
// bytes before them (head -c -32 OBJECT | sha256sum).
//
// A reader rejects an object whose magic is wrong, or whose version,
// compression, encryption or reserved bytes it does not know; unknown values
// mean a newer walship wrote the object (or that the header is damaged, which
// [Verify] tells apart).
//
// # Streaming
//
// [Writer] and [Reader] are stream wrappers: neither holds more than a
// bounded amount of the object in memory, whatever its size. The reader keeps
// back the last 40 bytes of the stream as the trailer, and returns io.EOF only
// once the checksum and the payload length have been verified; any damage,
// truncation or trailing data gives an error naming the object, never a
// silent io.EOF.
package codec
