package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/codec"
)

func (e *env) checkCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "check that the repository can be written, listed, read back and cleaned",
		Description: "Writes a probe object through the object codec, finds it by listing, reads it back with its\n" +
			"checksum verified, and deletes it. Each step prints its time; the first failure says what to fix.",
		Action: func(c *cli.Context) error {
			s, loc, err := openRepo(c)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "repository %s\n", loc)
			return e.probe(c.Context, s)
		},
	}
}

// probe round-trips one small object through the codec and the store.
func (e *env) probe(ctx context.Context, s storage.Store) error {
	var id [8]byte
	_, _ = rand.Read(id[:])
	key := "check/probe-" + hex.EncodeToString(id[:])
	payload := bytes.Repeat([]byte("walship repository check\n"), 2048)

	step := func(name string, f func() (string, error)) error {
		start := time.Now()
		detail, err := f()
		if err != nil {
			fmt.Fprintf(e.stdout, "  %-7s FAILED after %s\n", name, time.Since(start).Round(time.Millisecond))
			return err
		}
		fmt.Fprintf(e.stdout, "  %-7s ok  %6s  %s\n", name, time.Since(start).Round(time.Millisecond), detail)
		return nil
	}
	var stored codec.Info
	err := step("put", func() (string, error) {
		pr, pw := io.Pipe()
		go func() {
			w, err := codec.NewWriter(pw, codec.Options{Compression: codec.Zstd})
			if err == nil {
				_, err = w.Write(payload)
				if cerr := w.Close(); err == nil {
					err = cerr
				}
				stored = codec.Info{Size: w.Size(), StoredSize: w.StoredSize(), Sum: w.Sum()}
			}
			pw.CloseWithError(err)
		}()
		if err := s.Put(ctx, key, pr); err != nil {
			_ = pr.CloseWithError(err)
			return "", fmt.Errorf("write %s: %w; check the credentials, that the bucket or directory exists, and that this identity may write to it", key, err)
		}
		return fmt.Sprintf("%s: %d bytes stored as %d with zstd", key, stored.Size, stored.StoredSize), nil
	})
	if err != nil {
		return err
	}
	defer func() {
		// Leave no probe behind, whatever failed after the put.
		_ = s.Delete(context.WithoutCancel(ctx), key)
	}()
	err = step("list", func() (string, error) {
		for oi, err := range s.List(ctx, "check/") {
			if err != nil {
				return "", fmt.Errorf("list check/: %w; this identity needs list permission on the bucket", err)
			}
			if oi.Key == key {
				if oi.Size != stored.StoredSize {
					return "", fmt.Errorf("list shows %s with %d bytes, want %d", key, oi.Size, stored.StoredSize)
				}
				return "found the probe with its size", nil
			}
		}
		return "", fmt.Errorf("list check/ does not show %s just written; the store is not consistent after writes", key)
	})
	if err != nil {
		return err
	}
	err = step("get", func() (string, error) {
		rc, err := s.Get(ctx, key, 0)
		if err != nil {
			return "", fmt.Errorf("read back %s: %w; this identity needs read permission", key, err)
		}
		defer rc.Close()
		r, err := codec.NewReader(rc, key, nil)
		if err != nil {
			return "", err
		}
		defer r.Close()
		got, err := io.ReadAll(r)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(got, payload) {
			return "", fmt.Errorf("read back %s: payload differs from what was written", key)
		}
		return "payload and sha256 verified", nil
	})
	if err != nil {
		return err
	}
	return step("delete", func() (string, error) {
		if err := s.Delete(ctx, key); err != nil {
			return "", fmt.Errorf("delete %s: %w; pruning needs delete permission (an archiver-only identity may lack it on purpose)", key, err)
		}
		if _, err := s.Stat(ctx, key); err == nil {
			return "", fmt.Errorf("%s still exists after delete", key)
		}
		return "removed", nil
	})
}
