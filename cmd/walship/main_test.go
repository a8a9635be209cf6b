package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Cleanup()
	miniotest.Cleanup()
	os.Exit(code)
}

// walship runs the command line in-process and returns its exit code and
// output.
func walship(t *testing.T, environ map[string]string, args ...string) (int, string, string) {
	t.Helper()
	for k, v := range environ {
		t.Setenv(k, v)
	}
	var out, errOut bytes.Buffer
	code := run(context.Background(), append([]string{"walship"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"check"}, nil, "no repository: set --repo or WALSHIP_REPO"},
		{[]string{"--repo", "s3://Bad", "check"}, nil, `bucket "Bad"`},
		{[]string{"--repo", "/var/backups", "check"}, nil, "write file:///var/backups"},
		{[]string{"--repo", "s3://bkt?endpoint=ftp://x", "check"}, nil, "want http://host:port"},
		{[]string{"check"}, map[string]string{"WALSHIP_REPO": "gs://bkt"}, `unknown scheme "gs"`},
		{[]string{"--repo", "s3://AKID:hunter2@bkt", "check"}, nil, "credentials do not belong"},
		{[]string{"--log-format", "xml", "check"}, nil, "--log-format"},
		{[]string{"check"}, map[string]string{"WALSHIP_LOG_LEVEL": "loud"}, "--log-level"},
		{[]string{"--no-such-flag"}, nil, "flag provided but not defined"},
		{[]string{"frobnicate"}, nil, `no command "frobnicate"`},
		{nil, nil, "no command given"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) { wantUsageError(t, c.env, c.args, c.want) })
	}
}

func wantUsageError(t *testing.T, env map[string]string, args []string, want string) {
	code, _, errOut := walship(t, env, args...)
	if code != exitUsage {
		t.Errorf("walship %q: exit %d, want %d (stderr %q)", args, code, exitUsage, errOut)
	}
	if !strings.Contains(errOut, want) {
		t.Errorf("walship %q: stderr %q, want it to say %q", args, errOut, want)
	}
	if strings.Contains(errOut, "hunter2") {
		t.Errorf("walship %q printed the password: %q", args, errOut)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := walship(t, nil, "--version")
	if code != exitOK || !strings.Contains(out, "walship version") {
		t.Errorf("--version: exit %d, output %q", code, out)
	}
}

func TestCheck(t *testing.T) {
	srv := miniotest.Start(t)
	creds := map[string]string{"AWS_ACCESS_KEY_ID": srv.AccessKey, "AWS_SECRET_ACCESS_KEY": srv.SecretKey, "AWS_REGION": "us-east-1"}
	repos := map[string]string{
		"file":  "file://" + filepath.Join(t.TempDir(), "repo"),
		"s3":    "s3://" + srv.Bucket(t) + "/a/b?endpoint=" + srv.URL(),
		"minio": "minio://" + srv.Endpoint + "/" + srv.Bucket(t) + "/c?secure=false",
	}
	for name, repo := range repos {
		t.Run(name, func(t *testing.T) {
			code, out, errOut := walship(t, creds, "--repo", repo, "check")
			if code != exitOK {
				t.Fatalf("check: exit %d\nstdout %s\nstderr %s", code, out, errOut)
			}
			for _, step := range []string{"put", "list", "get", "delete"} {
				if !strings.Contains(out, "  "+step) {
					t.Errorf("output lacks step %s:\n%s", step, out)
				}
			}
		})
	}
	// Wrong credentials fail with exit 1 and a hint, never printing the secret.
	code, _, errOut := walship(t, map[string]string{"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}, "--repo", repos["s3"], "check")
	if code != exitFailed || !strings.Contains(errOut, "check the credentials") || strings.Contains(errOut, "s3cr3t-value") {
		t.Errorf("bad credentials: exit %d, stderr %q", code, errOut)
	}
}

// TestStaticBinary builds walship as the Makefile and the container image do
// and checks that the result has no dynamic dependencies.
func TestStaticBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "walship")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=test", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, _ := exec.Command("ldd", bin).CombinedOutput()
	if !strings.Contains(string(out), "not a dynamic executable") && !strings.Contains(string(out), "statically linked") {
		t.Errorf("ldd %s: %s; want a static binary", bin, out)
	}
	v, err := exec.Command(bin, "--version").Output()
	if err != nil || strings.TrimSpace(string(v)) != "walship version test" {
		t.Errorf("%s --version = %q, %v", bin, v, err)
	}
	cmd := exec.Command(bin, "--repo", "s3://X", "check")
	if err := cmd.Run(); cmd.ProcessState.ExitCode() != exitUsage {
		t.Errorf("bad --repo: exit %d (%v), want %d", cmd.ProcessState.ExitCode(), err, exitUsage)
	}
}
