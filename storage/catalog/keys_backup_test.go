package catalog

import (
	"testing"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
)

func TestBackupKey(t *testing.T) {
	seg := wal.Segment{TLI: 2, No: 0x1234}
	key := BackupKey(seg, 16*mb, 0x28)
	if want := "wal/00000002/000000020000001200000034.00000028.backup"; key != want {
		t.Errorf("BackupKey = %s, want %s", key, want)
	}
	if err := storage.ValidKey(key); err != nil {
		t.Error(err)
	}
	got, err := ParseWALKey(key, 16*mb)
	want := WALObject{Kind: BackupHistory, Segment: seg, TLI: 2, Offset: 0x28, Key: key}
	if err != nil || got != want {
		t.Errorf("ParseWALKey(%s) = %+v, %v; want %+v", key, got, err, want)
	}
	// The key is the file name PostgreSQL gives it, under its timeline.
	f, err := wal.ParseFileName("000000020000001200000034.00000028.backup", 16*mb)
	if err != nil || BackupKey(f.Segment, 16*mb, f.Offset) != key {
		t.Errorf("ParseFileName round trip: %+v, %v", f, err)
	}
	for _, bad := range []string{
		"wal/00000002/000000020000001200000034.01000000.backup", // offset beyond a 16 MB segment
		"wal/00000002/000000020000001200000034.0000002a.backup", // lower case
		"wal/00000002/000000020000001200000034.00000028.backupx",
		"wal/00000002/000000020000001200000034.0000028.backup",
		"wal/00000002/000000020000001200000034.+0000028.backup",
		"wal/00000002/000000020000001200000034.backup",
		"wal/00000003/000000020000001200000034.00000028.backup",
	} {
		if o, err := ParseWALKey(bad, 16*mb); err == nil {
			t.Errorf("ParseWALKey(%q) = %+v, want an error", bad, o)
		}
	}
}
