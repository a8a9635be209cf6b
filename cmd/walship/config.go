package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// maxConfigFile bounds a settings file and a _FILE secret.
const maxConfigFile = 1 << 20

// configFlag names the optional settings file.
func configFlag() cli.Flag {
	return &cli.StringFlag{
		Name: "config", EnvVars: []string{"WALSHIP_CONFIG"}, TakesFile: true,
		Usage: "settings `FILE` of WALSHIP_*=value lines (and PG*, AWS_* variables); flags and the environment override it",
	}
}

// applySettings makes the _FILE variables and the settings file part of
// the environment, under flags: a WALSHIP_X the environment lacks is read
// from the file its WALSHIP_X_FILE names, failing that taken from the
// settings file (where it may be a WALSHIP_X_FILE too). The global flags,
// parsed already, are updated from it; each command's flags read it when
// they are parsed. Errors name files, lines and variables, never values.
func applySettings(c *cli.Context) error {
	known := envVarsOf(c.App)
	// The environment first, its _FILE variables included, then the
	// settings file, then the _FILE variables the file set.
	if err := readSecretFiles(known); err != nil {
		return err
	}
	if path := c.String("config"); path != "" {
		settings, err := readSettings(path, known)
		if err != nil {
			return err
		}
		for _, kv := range settings {
			if _, set := os.LookupEnv(kv[0]); !set {
				os.Setenv(kv[0], kv[1])
			}
		}
		if err := readSecretFiles(known); err != nil {
			return err
		}
	}
	for _, f := range c.App.Flags {
		name := f.Names()[0]
		if c.IsSet(name) {
			continue
		}
		for _, ev := range envVars(f) {
			if v, ok := os.LookupEnv(ev); ok {
				if err := c.Set(name, v); err != nil {
					return usagef("%s: %v", ev, err)
				}
				break
			}
		}
	}
	return nil
}

// readSecretFiles sets each known variable that is not set from the file
// its _FILE variable names, if that is set.
func readSecretFiles(known map[string]bool) error {
	for name := range known {
		if _, set := os.LookupEnv(name); set {
			continue
		}
		path, ok := os.LookupEnv(name + "_FILE")
		if !ok {
			continue
		}
		v, err := readSecret(path)
		if err != nil {
			return usagef("%s_FILE: %v", name, err)
		}
		os.Setenv(name, v)
	}
	return nil
}

// readSettings reads a settings file: one NAME=value per line, blank lines
// and lines starting with # ignored, an optional "export " in front, and
// the value optionally in single or double quotes (taken as is, without
// escapes), as systemd's EnvironmentFile, docker's --env-file and a shell
// read it. Names are walship's variables (or NAME_FILE for one), or libpq's
// PG* and the AWS SDK's AWS_* variables, which pass to them.
func readSettings(path string, known map[string]bool) ([][2]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("--config: %v", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxConfigFile {
		return nil, usagef("--config %s: larger than %d bytes; is it the right file?", path, maxConfigFile)
	}
	var out [][2]string
	sc := bufio.NewScanner(io.LimitReader(f, maxConfigFile))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, value, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		name = strings.TrimSpace(name)
		if !ok || !validName(name) {
			// Not shown: the line may be a value, a password in it.
			return nil, usagef("--config %s, line %d: want NAME=value, the NAME of letters, digits and underscores", path, n)
		}
		if !settingAllowed(name, known) {
			return nil, usagef("--config %s, line %d: %s is not a walship setting (see walship --help and each command's --help for the WALSHIP_* names; PG* and AWS_* variables pass through)", path, n, name)
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		out = append(out, [2]string{name, value})
	}
	if err := sc.Err(); err != nil {
		return nil, usagef("--config %s: %v", path, err)
	}
	return out, nil
}

// validName reports whether name can be an environment variable's name.
func validName(name string) bool {
	for i, c := range name {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return name != ""
}

func settingAllowed(name string, known map[string]bool) bool {
	switch {
	case known[name] && name != "WALSHIP_CONFIG":
		return true
	case strings.HasSuffix(name, "_FILE") && known[strings.TrimSuffix(name, "_FILE")]:
		return true
	case strings.HasPrefix(name, "WALSHIP_"):
		return false
	}
	return strings.HasPrefix(name, "PG") || strings.HasPrefix(name, "AWS_")
}

// readSecret reads a secret's file, without its final line break.
func readSecret(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("read %s: %v", path, err)
	case len(b) > maxConfigFile:
		return "", fmt.Errorf("%s is larger than %d bytes", path, maxConfigFile)
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"), nil
}

// envVarsOf lists the variables of every flag of app and its commands.
func envVarsOf(app *cli.App) map[string]bool {
	out := map[string]bool{}
	add := func(flags []cli.Flag) {
		for _, f := range flags {
			for _, ev := range envVars(f) {
				out[ev] = true
			}
		}
	}
	add(app.Flags)
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			add(c.Flags)
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
	return out
}

func envVars(f cli.Flag) []string {
	if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
		return slices.Clone(ev.GetEnvVars())
	}
	return nil
}
