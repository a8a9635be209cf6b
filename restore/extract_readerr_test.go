package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestExtractReadCutShort: a download cut short fails with an error that
// wraps io.ErrUnexpectedEOF (net/http's for a body shorter than its
// Content-Length, which the codec passes on). That is the reader failing,
// not a damaged archive: the error must say so, keep the reader's error,
// and not be ErrBadArchive, inside a file and inside a header alike.
func TestExtractReadCutShort(t *testing.T) {
	good := tarBytes(t, 0, tarFile("a", strings.Repeat("a", 5000), 0o600), tarFile("b", "b", 0o600))
	cut := fmt.Errorf("codec: object backups/x/base.tar: read: %w", io.ErrUnexpectedEOF)
	for name, at := range map[string]int{"inside a file": 2000, "inside a header": 512*11 + 100} {
		t.Run(name, func(t *testing.T) {
			_, dir := extractTarget(t)
			_, err := Extract(context.Background(), io.MultiReader(bytes.NewReader(good[:at]), iotestErrReader{cut}), dir, ExtractOptions{})
			if !errors.Is(err, cut) || errors.Is(err, ErrBadArchive) || !strings.Contains(err.Error(), "backups/x/base.tar") {
				t.Errorf("a download cut short: %v, want the reader's error, not ErrBadArchive", err)
			}
		})
	}
	// A stream that simply ends early is a truncated archive.
	_, dir := extractTarget(t)
	if _, err := Extract(context.Background(), bytes.NewReader(good[:2000]), dir, ExtractOptions{}); !errors.Is(err, ErrBadArchive) {
		t.Errorf("an archive that ends early: %v, want ErrBadArchive", err)
	}
}
