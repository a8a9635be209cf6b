// Package file implements storage.Store on a local directory, the embedded
// default repository.
//
// A key maps to the file of the same relative path under the root directory.
// Writes go to a temporary file ".<name>.tmp-<random>" in the target's
// directory, which is fsynced, renamed (or hard-linked, for Create) into place,
// and followed by an fsync of the directory, so that an object is either
// wholly present after a crash or absent. Names starting with a dot are never
// listed. A process killed mid-write leaves its temporary file behind; Sweep
// removes those not written since a cut-off. Directories are made as keys
// need them and removed once Delete or Sweep empties them.
package file
