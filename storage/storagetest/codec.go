package storagetest

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/codec"
)

// testCodec checks that what the store hands back is what the codec wrote,
// and that a stored object that was damaged or cut short is detected when
// read, with an error naming its key.
func testCodec(t *testing.T, s storage.Store) {
	const key = "wal/00000001/000000010000000000000007"
	payload := append(bytes.Repeat([]byte("checkpoint record "), 30000), pattern(300000)...)
	var stored bytes.Buffer
	w, err := codec.NewWriter(&stored, codec.Options{Compression: codec.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	raw := stored.Bytes()

	read := func() ([]byte, error) {
		rc, err := s.Get(ctx(t), key, 0)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		r, err := codec.NewReader(rc, key, nil)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return io.ReadAll(r)
	}
	put(t, s, key, raw)
	got, err := read()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("round trip through the store: %d bytes, %v; want %d bytes", len(got), err, len(payload))
	}

	damaged := map[string][]byte{
		"flipped byte": flip(raw, len(raw)/2),
		"flipped sum":  flip(raw, len(raw)-1),
		"truncated":    raw[:len(raw)-100],
		"cut to half":  raw[:len(raw)/2],
		"empty":        nil,
	}
	for name, b := range damaged {
		put(t, s, key, b)
		_, err := read()
		if !errors.Is(err, codec.ErrCorrupt) || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: read gave %v, want codec.ErrCorrupt naming %s", name, err, key)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}
