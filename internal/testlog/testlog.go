// Package testlog gives tests a slog.Logger that writes through t.Log, so
// that a test's log shows only when it fails or runs verbosely.
package testlog

import (
	"io"
	"log/slog"
	"testing"
)

type writer struct{ t testing.TB }

func (w writer) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// Writer writes through t.Log, a t.Log call per Write.
func Writer(t testing.TB) io.Writer { return writer{t} }

// New returns a logger at debug level that writes through t.Log.
func New(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(writer{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
