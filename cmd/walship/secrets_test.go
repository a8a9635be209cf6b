package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/pgtest"
)

// TestSecretsNeverPrinted runs the commands that connect to PostgreSQL at
// debug level with a password in the connection string (given as a flag,
// through WALSHIP_PG_FILE and through a settings file), against a server
// that works, a port where none listens, and as a malformed string, and
// checks that the password appears in no output, error or log line.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "hunter2-Secret"
	c := pgtest.Start(t, pgtest.Options{})
	dir := t.TempDir()
	repo := "file://" + filepath.Join(dir, "repo")
	conns := map[string]string{
		"working":   c.ConnString() + " password=" + secret,
		"no server": "host=127.0.0.1 port=1 user=postgres password=" + secret + " connect_timeout=2",
		"malformed": "host=127.0.0.1 port=notaport password=" + secret,
		"url":       "postgres://postgres:" + secret + "@127.0.0.1:1/postgres?connect_timeout=2",
	}
	commands := [][]string{
		{"check"},
		{"archive", "--until-caught-up"},
		{"backup", "--fast", "--wal-timeout", "5s"},
		{"list"},
	}
	for name, conn := range conns {
		secretFile := filepath.Join(dir, "pg-"+strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(secretFile, []byte(conn+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		conf := secretFile + ".conf"
		if err := os.WriteFile(conf, []byte("WALSHIP_PG="+conn+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range commands {
			for how, args := range map[string][]string{
				"flag":     append([]string{"--pg", conn}, cmd...),
				"_FILE":    cmd,
				"settings": append([]string{"--config", conf}, cmd...),
			} {
				env := map[string]string{}
				if how == "_FILE" {
					env["WALSHIP_PG_FILE"] = secretFile
				}
				unsetenv(t, "WALSHIP_PG", "WALSHIP_PG_FILE")
				args = append([]string{"--repo", repo, "--log-level", "debug"}, args...)
				if cmd[0] == "list" {
					args = append(args, "--json")
				}
				code, out, errOut := walship(t, env, args...)
				if strings.Contains(out+errOut, secret) {
					t.Errorf("%s connection, %s, walship %s (exit %d) printed the password:\n%s%s", name, how, strings.Join(cmd, " "), code, out, errOut)
				}
				if name == "working" && code != exitOK {
					t.Errorf("%s connection, %s, walship %s: exit %d\n%s", name, how, strings.Join(cmd, " "), code, errOut)
				}
			}
		}
	}
}
