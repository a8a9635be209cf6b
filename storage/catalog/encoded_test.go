package catalog

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"filippo.io/age"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/codec"
	"github.com/walship/walship/storage/file"
)

func TestEncoded(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string]Options{
		"zstd":      {Codec: codec.Options{Compression: codec.Zstd}},
		"plain":     {},
		"encrypted": {Codec: codec.Options{Compression: codec.Zstd, Recipients: []age.Recipient{id.Recipient()}}, Identities: []age.Identity{id}},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := file.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			r := New(s, opts)
			payload := bytes.Repeat([]byte("wal record "), 100000)
			e, err := r.Encode("wal/a", bytes.NewReader(payload))
			if err != nil {
				t.Fatal(err)
			}
			defer e.Release()
			if e.Key != "wal/a" || e.Size != int64(len(payload)) {
				t.Errorf("Encode = %+v", e.Object)
			}
			for range 2 { // a retry stores the same bytes
				if err := r.CreateEncoded(ctx, e); err != nil && !errors.Is(err, storage.ErrExist) {
					t.Fatal(err)
				}
			}
			got, err := r.ReadAll(ctx, "wal/a", 2*mb)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("read back %d bytes, %v", len(got), err)
			}
			if same, err := r.SameAsStored(ctx, e); !same || err != nil {
				t.Errorf("SameAsStored of what was stored = %v, %v", same, err)
			}
			// The same payload encoded again: equal bytes, or for age a
			// new nonce and the payload compared decoded.
			again, err := r.Encode("wal/a", bytes.NewReader(payload))
			if err != nil {
				t.Fatal(err)
			}
			defer again.Release()
			if same, err := r.SameAsStored(ctx, again); !same || err != nil {
				t.Errorf("SameAsStored of the payload encoded again = %v, %v", same, err)
			}
			other := bytes.Clone(payload)
			other[len(other)/2] ^= 1
			diff, err := r.Encode("wal/a", bytes.NewReader(other))
			if err != nil {
				t.Fatal(err)
			}
			defer diff.Release()
			if same, err := r.SameAsStored(ctx, diff); same || err != nil {
				t.Errorf("SameAsStored of a different payload = %v, %v", same, err)
			}
			short, err := r.Encode("wal/a", bytes.NewReader(payload[1:]))
			if err != nil {
				t.Fatal(err)
			}
			defer short.Release()
			if same, err := r.SameAsStored(ctx, short); same || err != nil {
				t.Errorf("SameAsStored of a shorter payload = %v, %v", same, err)
			}
		})
	}
}
