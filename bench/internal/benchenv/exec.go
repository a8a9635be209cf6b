package benchenv

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// MiB is a mebibyte, the unit the programs print memory and sizes in.
const MiB = 1 << 20

// Command builds a child in a process group of its own, killed whole when
// ctx ends (pgBackRest's and barman's workers included).
func Command(ctx context.Context, env, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Capture runs args and returns their combined output, also in the error
// when they fail. A nil env is this process's environment.
func Capture(ctx context.Context, env []string, args ...string) ([]byte, error) {
	out, err := Command(ctx, env, args).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w\n%s", filepath.Base(args[0]), err, out)
	}
	return out, nil
}

// Sh runs a command with its output on this process's stderr.
func Sh(ctx context.Context, name string, args ...string) error {
	cmd := Command(ctx, nil, append([]string{name}, args...))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// AsPostgres is the command prefix that runs a program as the postgres
// user, keeping this process's environment (runuser without --login).
func AsPostgres(args ...string) []string {
	return append([]string{"runuser", "-u", "postgres", "--"}, args...)
}

// EnsurePackages installs Debian packages when command is not on PATH,
// running apt-get update only when the first install fails.
func EnsurePackages(ctx context.Context, command string, pkgs ...string) error {
	if _, err := exec.LookPath(command); err == nil {
		return nil
	}
	fmt.Printf("installing %s (apt-get install -y %[1]s)\n", strings.Join(pkgs, " "))
	install := append([]string{"install", "-y"}, pkgs...)
	if Sh(ctx, "apt-get", install...) == nil {
		return nil
	}
	if err := Sh(ctx, "apt-get", "update"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	if err := Sh(ctx, "apt-get", install...); err != nil {
		return fmt.Errorf("apt-get install %s: %w", strings.Join(pkgs, " "), err)
	}
	return nil
}

// WorkDir makes a temporary directory owned by postgres, for a cluster,
// its socket and the peers' repositories.
func WorkDir(ctx context.Context, prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	if err := Sh(ctx, "chown", "postgres:postgres", dir); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("chown postgres %s: %w", dir, err)
	}
	return dir, nil
}

// DirBytes sums the sizes of the regular files under dir.
func DirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	return n, err
}

// Machine describes this machine in one line: CPUs, RAM, kernel, Go.
func Machine() string {
	ram := float64(kB(procValue("/proc/meminfo", "MemTotal"))) / (1 << 30)
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs (%s), %.1f GiB RAM, Linux %s, %s", runtime.NumCPU(), procValue("/proc/cpuinfo", "model name"),
		ram, strings.TrimSpace(string(kernel)), runtime.Version())
}

// Version is the first line a version command prints.
func Version(ctx context.Context, args ...string) string {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// PackageVersion is the version of an installed Debian package.
func PackageVersion(ctx context.Context, pkg string) string {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", pkg).Output()
	if err != nil {
		return "not installed"
	}
	return strings.TrimSpace(string(out))
}
