// Command serve starts one MinIO server, runs a command with the
// WALSHIP_TEST_MINIO_* variables naming it, and stops it afterwards, so that
// every test binary of one test run shares a single server.
//
//	go run ./internal/miniotest/serve -- go test ./...
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/walship/walship/internal/miniotest"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: serve -- command [args...]")
		os.Exit(2)
	}
	srv, err := miniotest.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "serve: MinIO at %s for: %v\n", srv.URL(), args)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), srv.Env()...)
	// Signals go to the command; serve outlives it to stop the server.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	if err = cmd.Start(); err == nil {
		go func() {
			for s := range sig {
				_ = cmd.Process.Signal(s)
			}
		}()
		err = cmd.Wait()
	}
	srv.Stop()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.ExitCode())
	case err != nil:
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
