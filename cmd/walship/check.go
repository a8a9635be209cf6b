package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/progress"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

func (e *env) checkCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "check the configuration, the repository and (with --pg) the primary and its slot, and say what to fix",
		Description: "Repository: writes a probe object through the object codec, finds it by listing, reads it back with\n" +
			"its checksum verified, and deletes it (--read-only: lists and reads only), then reads walship.json.\n" +
			"Primary (with --pg): connects over replication as the archiver does (password, pg_hba.conf, the\n" +
			"REPLICATION attribute, wal_level, max_wal_senders), checks that the repository belongs to this\n" +
			"cluster, and shows the slot's state. Every check runs; each failure says what to fix; exit 1 if any failed.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "slot", EnvVars: []string{"WALSHIP_SLOT"}, Value: archiver.DefaultSlot, Usage: "the archiver's replication `SLOT`"},
			&cli.BoolFlag{Name: "read-only", EnvVars: []string{"WALSHIP_CHECK_READ_ONLY"}, Usage: "only list and read the repository, for identities that may not write (restore hosts)"},
		},
		Action: func(c *cli.Context) error {
			s, loc, err := openRepo(c)
			if err != nil {
				return err
			}
			if err := archiver.ValidSlotName(c.String("slot")); err != nil {
				return usageError{err}
			}
			var failed []string
			fail := func(what string, err error) {
				fmt.Fprintf(e.stdout, "  FAILED: %s (below)\n", what)
				failed = append(failed, fmt.Sprintf("%s: %v", what, err))
			}
			fmt.Fprintf(e.stdout, "repository %s\n", loc)
			if c.Bool("read-only") {
				err = e.probeReadOnly(c.Context, s)
			} else {
				err = e.probe(c.Context, s)
			}
			if err != nil {
				fail("repository access", err)
			}
			repo := catalog.New(s, catalog.Options{})
			meta, err := repo.ReadMeta(c.Context)
			switch {
			case errors.Is(err, catalog.ErrNoMeta):
				fmt.Fprintln(e.stdout, "  walship.json: none yet; the first archive or backup writes it")
			case err != nil:
				fail("repository metadata", err)
			default:
				fmt.Fprintf(e.stdout, "  walship.json: system %s, %s WAL segments\n", meta.SystemID, progress.Bytes(int64(meta.SegmentSize)))
			}
			if pg := pgConnString(c); pg == "" {
				fmt.Fprintln(e.stdout, "primary: not checked (no --pg or WALSHIP_PG)")
			} else {
				fmt.Fprintln(e.stdout, "primary")
				if err := e.checkPrimary(c.Context, pg, c.String("slot"), meta); err != nil {
					fail("primary", err)
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("check failed:\n  %s", strings.Join(failed, "\n  "))
			}
			fmt.Fprintln(e.stdout, "all checks passed")
			return nil
		},
	}
}

// checkPrimary connects to the primary as the archiver does, compares it
// with the repository's walship.json (zero if none), and shows the slot.
func (e *env) checkPrimary(ctx context.Context, pg, slot string, meta catalog.Meta) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	srv, err := archiver.Identify(ctx, pg)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "  replication connection ok: PostgreSQL %d.%d, system %s, timeline %d, flushed to %s, %s WAL segments\n",
		srv.VersionNum/10000, srv.VersionNum%10000, srv.SystemID, srv.TLI, srv.FlushLSN, progress.Bytes(int64(srv.SegmentSize)))
	if meta.SystemID != "" && (meta.SystemID != srv.SystemID || meta.SegmentSize != srv.SegmentSize) {
		return fmt.Errorf("the repository belongs to system %s with %s segments, the primary is system %s with %s: use another repository (or prefix) for this cluster",
			meta.SystemID, progress.Bytes(int64(meta.SegmentSize)), srv.SystemID, progress.Bytes(int64(srv.SegmentSize)))
	}
	st := readSlotState(ctx, pg, slot)
	switch {
	case st.Error == "no such slot on the server":
		fmt.Fprintf(e.stdout, "  slot %s: none yet; walship archive (or backup) creates it\n", slot)
	case st.Error != "":
		fmt.Fprintf(e.stdout, "  slot %s: state not read over an ordinary connection (%s); the archiver itself needs only replication connections\n", slot, st.Error)
	case st.WALStatus == "lost":
		return fmt.Errorf("slot %s: wal_status lost: the primary removed WAL the slot held (max_slot_wal_keep_size), so the repository has a gap; take a new base backup, drop the slot and archive again with --accept-gap", slot)
	default:
		safe := "unlimited"
		if st.SafeWALSize != nil {
			safe = progress.Bytes(*st.SafeWALSize)
		}
		fmt.Fprintf(e.stdout, "  slot %s: active=%v restart_lsn=%s wal_status=%s safe_wal_size=%s\n", slot, st.Active, st.RestartLSN, st.WALStatus, safe)
		if st.WALStatus == "unreserved" {
			fmt.Fprintf(e.stdout, "  warning: slot %s is about to lose WAL (wal_status unreserved): is the archiver running and keeping up?\n", slot)
		}
	}
	return nil
}

// probeReadOnly lists the repository and reads walship.json's bytes back,
// checksum verified, writing nothing.
func (e *env) probeReadOnly(ctx context.Context, s storage.Store) error {
	start := time.Now()
	n := 0
	for _, err := range s.List(ctx, catalog.MetaKey) {
		if err != nil {
			fmt.Fprintf(e.stdout, "  list    FAILED after %s\n", time.Since(start).Round(time.Millisecond))
			return fmt.Errorf("list %s: %w; this identity needs list permission on the bucket", catalog.MetaKey, err)
		}
		n++
	}
	fmt.Fprintf(e.stdout, "  list    ok  %6s\n", time.Since(start).Round(time.Millisecond))
	if n == 0 {
		return nil
	}
	start = time.Now()
	if _, err := catalog.New(s, catalog.Options{}).ReadMeta(ctx); err != nil {
		fmt.Fprintf(e.stdout, "  get     FAILED after %s\n", time.Since(start).Round(time.Millisecond))
		return fmt.Errorf("%w; this identity needs read permission", err)
	}
	fmt.Fprintf(e.stdout, "  get     ok  %6s  %s read, checksum verified\n", time.Since(start).Round(time.Millisecond), catalog.MetaKey)
	return nil
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
