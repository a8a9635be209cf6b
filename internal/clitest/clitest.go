// Package clitest builds the walship binary once per test binary, for tests
// that run it as PostgreSQL's archive_command or restore_command or as a
// process to kill; only tests import it.
package clitest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var dir string

var build = sync.OnceValues(func() (string, error) {
	d, err := os.MkdirTemp("", "walship-bin-")
	if err != nil {
		return "", err
	}
	dir = d
	// The postgres user runs the binary as archive_command.
	if err := os.Chmod(d, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(d, "walship")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/walship/walship/cmd/walship")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// Binary returns the path of a walship binary built from this tree, in a
// directory every user can read.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Cleanup removes the binary; call it from TestMain after m.Run.
func Cleanup() {
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
}
