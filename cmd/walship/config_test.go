package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// unsetenv unsets variables for the test and restores them after it, so
// that what a run's settings put into the environment does not leak.
func unsetenv(t *testing.T, names ...string) {
	for _, n := range names {
		t.Setenv(n, "")
		os.Unsetenv(n)
	}
}

// TestEveryFlagHasEnv checks the contract that every flag of every command
// can be set through a WALSHIP_* variable.
func TestEveryFlagHasEnv(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	check := func(where string, flags []cli.Flag) {
		for _, f := range flags {
			evs := envVars(f)
			if len(evs) == 0 || !strings.HasPrefix(evs[0], "WALSHIP_") {
				t.Errorf("%s --%s has no WALSHIP_* variable", where, f.Names()[0])
			}
		}
	}
	check("walship", app.Flags)
	for _, c := range app.Commands {
		if !c.Hidden {
			check("walship "+c.Name, c.Flags)
		}
	}
}

// TestSettingsPrecedence checks flag > environment > settings file, for a
// global flag and a command's flag, and secrets from _FILE variables.
func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	repo := func(name string) string { return "file://" + filepath.Join(dir, name) }
	conf := filepath.Join(dir, "walship.conf")
	write := func(path, text string) {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(conf, "# walship settings\n\nWALSHIP_REPO="+repo("conf")+"\nexport WALSHIP_BACKUP_CONCURRENCY = '99'\nPGPASSWORD=\"from the file\"\n")
	names := []string{"WALSHIP_REPO", "WALSHIP_REPO_FILE", "WALSHIP_BACKUP_CONCURRENCY", "PGPASSWORD", "WALSHIP_CONFIG"}
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"file", nil, []string{"--config", conf, "check"}, "repository " + repo("conf")},
		{"file by env", map[string]string{"WALSHIP_CONFIG": conf}, []string{"check"}, "repository " + repo("conf")},
		{"env over file", map[string]string{"WALSHIP_REPO": repo("env")}, []string{"--config", conf, "check"}, "repository " + repo("env")},
		{"flag over env", map[string]string{"WALSHIP_REPO": repo("env")}, []string{"--config", conf, "--repo", repo("flag"), "check"}, "repository " + repo("flag")},
		{"secret file", map[string]string{"WALSHIP_REPO_FILE": filepath.Join(dir, "secret")}, []string{"check"}, "repository " + repo("from-secret")},
		{"env over secret file", map[string]string{"WALSHIP_REPO": repo("env"), "WALSHIP_REPO_FILE": filepath.Join(dir, "secret")}, []string{"check"}, "repository " + repo("env")},
		{"secret file over file", map[string]string{"WALSHIP_REPO_FILE": filepath.Join(dir, "secret")}, []string{"--config", conf, "check"}, "repository " + repo("from-secret")},
	} {
		t.Run(c.name, func(t *testing.T) {
			unsetenv(t, names...)
			write(filepath.Join(dir, "secret"), repo("from-secret")+"\n")
			code, out, errOut := walship(t, c.env, c.args...)
			if code != exitOK || !strings.Contains(out, c.want+"\n") {
				t.Fatalf("exit %d, output %q %s; want %q", code, out, errOut, c.want)
			}
		})
	}
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"command flag from file", nil, []string{"--config", conf, "backup"}, "--concurrency 99"},
		{"command flag from env", map[string]string{"WALSHIP_BACKUP_CONCURRENCY": "77"}, []string{"--config", conf, "backup"}, "--concurrency 77"},
		{"command flag", map[string]string{"WALSHIP_BACKUP_CONCURRENCY": "77"}, []string{"--config", conf, "backup", "--concurrency", "88"}, "--concurrency 88"},
	} {
		t.Run(c.name, func(t *testing.T) {
			unsetenv(t, names...)
			wantUsageError(t, c.env, c.args, c.want)
		})
	}
	t.Run("passes PG variables", func(t *testing.T) {
		unsetenv(t, names...)
		walship(t, nil, "--config", conf, "check")
		if got := os.Getenv("PGPASSWORD"); got != "from the file" {
			t.Errorf("PGPASSWORD = %q", got)
		}
	})
}

// TestSettingsErrors checks that a bad settings file or secret file is a
// usage error naming the file, line or variable, never a value.
func TestSettingsErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(text string) string {
		f, err := os.CreateTemp(dir, "conf")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(text)
		f.Close()
		return f.Name()
	}
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown walship name", nil, []string{"--config", file("WALSHIP_REPO=file:///x\nWALSHIP_PASSWORD=hunter2\n"), "check"}, "line 2: WALSHIP_PASSWORD is not a walship setting"},
		{"other name", nil, []string{"--config", file("HOME=hunter2\n"), "check"}, "line 1: HOME is not a walship setting"},
		{"no equals", nil, []string{"--config", file("# x\nhunter2\n"), "check"}, "line 2: want NAME=value"},
		{"missing file", nil, []string{"--config", filepath.Join(dir, "absent"), "check"}, "--config: open"},
		{"missing secret", map[string]string{"WALSHIP_PG_FILE": filepath.Join(dir, "absent")}, []string{"check"}, "WALSHIP_PG_FILE: open"},
		{"bad value of a global flag", nil, []string{"--config", file("WALSHIP_LOG_LEVEL=hunter2\n"), "check"}, "--log-level"},
	} {
		t.Run(c.name, func(t *testing.T) {
			unsetenv(t, "WALSHIP_REPO", "WALSHIP_PG", "WALSHIP_LOG_LEVEL", "WALSHIP_PG_FILE")
			code, _, errOut := walship(t, c.env, c.args...)
			if code != exitUsage || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, stderr %q; want usage error with %q", code, errOut, c.want)
			}
			if c.name != "bad value of a global flag" && strings.Contains(errOut, "hunter2") {
				t.Errorf("the error shows a value: %q", errOut)
			}
		})
	}
}
