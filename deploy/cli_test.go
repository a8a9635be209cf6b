package deploy

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/scheduler"
	"github.com/walship/walship/storage/location"
)

// The binary every test checks against is built once, by the Dockerfile's
// own build steps (dockerfile_test.go), so that the flags the artefacts use
// are those of the binary the image would hold.
var (
	buildOnce sync.Once
	builtBin  string
	builtErr  error
	buildDir  string

	cliOnce sync.Once
	theCLI  *cli
	cliErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "walship-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// walshipBinary returns the binary built by the Dockerfile's steps.
func walshipBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() { builtBin, builtErr = buildAsDockerfile(buildDir) })
	if builtErr != nil {
		t.Fatalf("build walship as deploy/Dockerfile does: %v", builtErr)
	}
	return builtBin
}

// walshipCLI returns the command line of the built binary, from its help.
func walshipCLI(t *testing.T) *cli {
	t.Helper()
	bin := walshipBinary(t)
	cliOnce.Do(func() { theCLI, cliErr = readCLI(bin) })
	if cliErr != nil {
		t.Fatalf("read walship's help: %v", cliErr)
	}
	return theCLI
}

// flagInfo is one flag as --help shows it.
type flagInfo struct {
	takesValue bool
	def        string // the default, "" if none is shown
	env        []string
}

// command is a command's flags, and how many positional arguments it takes.
type command struct {
	flags map[string]flagInfo
	args  int
}

// cli is walship's command line: the global flags and the commands.
type cli struct {
	global   map[string]flagInfo
	commands map[string]command
}

var (
	flagLine  = regexp.MustCompile(`^\s+(--[a-z0-9-]+(?:, -[a-z])?)(.*)$`)
	envRef    = regexp.MustCompile(`\$([A-Z][A-Z0-9_]*)`)
	defaultRe = regexp.MustCompile(`\(default: "?([^")]*)"?\)`)
)

func readCLI(bin string) (*cli, error) {
	help := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("walship %s --help: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	root, err := help()
	if err != nil {
		return nil, err
	}
	c := &cli{global: parseFlags(section(root, "GLOBAL OPTIONS:")), commands: map[string]command{}}
	for _, line := range strings.Split(section(root, "COMMANDS:"), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "help") {
			continue
		}
		name := strings.TrimSuffix(f[0], ",")
		h, err := help(name)
		if err != nil {
			return nil, err
		}
		usage := strings.Fields(section(h, "USAGE:"))
		args := 0
		for i, w := range usage {
			if w == "options]" {
				args = len(usage) - i - 1
			}
		}
		c.commands[name] = command{flags: parseFlags(section(h, "OPTIONS:")), args: args}
	}
	if len(c.commands) < 8 || len(c.global) < 3 {
		return nil, fmt.Errorf("found %d commands and %d global flags in the help; its format changed?", len(c.commands), len(c.global))
	}
	return c, nil
}

// section returns the indented lines under heading.
func section(help, heading string) string {
	var b strings.Builder
	in := false
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == heading:
			in = true
		case in && line != "" && !strings.HasPrefix(line, " "):
			return b.String()
		case in:
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func parseFlags(text string) map[string]flagInfo {
	flags := map[string]flagInfo{}
	for _, line := range strings.Split(text, "\n") {
		m := flagLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		// "--slot SLOT   usage": a placeholder before the usage's two spaces.
		head, usage, _ := strings.Cut(strings.TrimLeft(m[2], " "), "  ")
		if strings.HasPrefix(m[2], "  ") {
			head, usage = "", strings.TrimSpace(m[2])
		}
		fi := flagInfo{takesValue: strings.TrimSpace(head) != ""}
		if d := defaultRe.FindStringSubmatch(usage); d != nil {
			fi.def = d[1]
		}
		if i := strings.LastIndex(usage, "[$"); i >= 0 {
			for _, e := range envRef.FindAllStringSubmatch(usage[i:], -1) {
				fi.env = append(fi.env, e[1])
			}
		}
		for _, n := range strings.Split(m[1], ", ") {
			flags[strings.TrimLeft(n, "-")] = fi
		}
	}
	return flags
}

// invocation is a checked walship command line.
type invocation struct {
	command string
	values  map[string]string // flag (global or the command's) to value; "true" for booleans
}

// check parses args (without the program name) as walship would: global
// flags, the command, its flags and its positional arguments. Every flag
// must exist where it is given, and values of known kinds must parse.
func (c *cli) check(args []string) (invocation, error) {
	inv := invocation{values: map[string]string{}}
	i, err := c.flags(args, 0, c.global, inv.values)
	if err != nil {
		return inv, err
	}
	if i == len(args) {
		return inv, fmt.Errorf("no command in %q", args)
	}
	inv.command = args[i]
	cmd, ok := c.commands[inv.command]
	if !ok {
		return inv, fmt.Errorf("walship has no command %q", inv.command)
	}
	rest := args[i+1:]
	var positional []string
	for len(rest) > 0 {
		j, err := c.flags(rest, 0, cmd.flags, inv.values)
		if err != nil {
			return inv, fmt.Errorf("walship %s: %v", inv.command, err)
		}
		if j < len(rest) {
			positional = append(positional, rest[j])
			j++
		}
		rest = rest[j:]
	}
	if len(positional) != cmd.args {
		return inv, fmt.Errorf("walship %s takes %d arguments, got %q", inv.command, cmd.args, positional)
	}
	return inv, nil
}

// flags reads flags from args[i:] until the first non-flag.
func (c *cli) flags(args []string, i int, known map[string]flagInfo, values map[string]string) (int, error) {
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		name, value, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		fi, ok := known[name]
		if !ok {
			return i, fmt.Errorf("no flag --%s here", name)
		}
		switch {
		case fi.takesValue && !hasValue:
			if i+1 == len(args) {
				return i, fmt.Errorf("--%s needs a value", name)
			}
			i++
			value = args[i]
		case !fi.takesValue && !hasValue:
			value = "true"
		}
		if err := checkValue(name, fi, value); err != nil {
			return i, err
		}
		values[name] = value
		i++
	}
	return i, nil
}

// checkEnv checks environment variables given to `walship <command>`:
// every WALSHIP_* variable must be one of a global flag's or the
// command's, and its value must parse.
func (c *cli) checkEnv(cmd string, env map[string]string) error {
	for name, value := range env {
		if !strings.HasPrefix(name, "WALSHIP_") {
			continue
		}
		flag, fi, ok := c.envFlag(cmd, name)
		if !ok {
			return fmt.Errorf("walship %s has no flag read from %s", cmd, name)
		}
		if strings.Contains(value, "${") || value == "" {
			continue // filled in elsewhere
		}
		if err := checkValue(flag, fi, value); err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
	}
	return nil
}

func (c *cli) envFlag(cmd, env string) (string, flagInfo, bool) {
	for _, set := range []map[string]flagInfo{c.commands[cmd].flags, c.global} {
		for name, fi := range set {
			for _, e := range fi.env {
				if e == env {
					return name, fi, true
				}
			}
		}
	}
	return "", flagInfo{}, false
}

// checkValue parses what the flag's kind allows: durations where the
// default is one, integers where it is one, schedules and repository URLs
// with walship's own parsers.
func checkValue(name string, fi flagInfo, value string) error {
	if !fi.takesValue {
		if _, err := strconv.ParseBool(value); err != nil {
			return fmt.Errorf("--%s is a switch, not %q", name, value)
		}
		return nil
	}
	switch {
	case strings.HasSuffix(name, "schedule"):
		if _, err := scheduler.ParseSchedule(value); err != nil {
			return fmt.Errorf("--%s: %v", name, err)
		}
	case name == "repo":
		if _, err := location.Parse(value); err != nil {
			return fmt.Errorf("--repo: %v", err)
		}
	case isDuration(fi.def):
		if _, err := time.ParseDuration(value); err != nil {
			return fmt.Errorf("--%s %q: not a duration", name, value)
		}
	case isInt(fi.def):
		if _, err := strconv.Atoi(value); err != nil {
			return fmt.Errorf("--%s %q: not a number", name, value)
		}
	}
	return nil
}

func isDuration(s string) bool {
	_, err := time.ParseDuration(s)
	return err == nil && s != "0" && !isInt(s)
}

func isInt(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

// duration is the value of a duration flag in inv, or its default.
func (c *cli) duration(t *testing.T, inv invocation, flag string) time.Duration {
	t.Helper()
	v, ok := inv.values[flag]
	if !ok {
		v = c.commands[inv.command].flags[flag].def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("walship %s --%s: %q is not a duration", inv.command, flag, v)
	}
	return d
}

// roleFor is the IAM role (deploy/aws/README.md) each command runs under:
// the least that lets it work.
func roleFor(cmd string) string {
	switch cmd {
	case "archive", "backup", "wal-push", "check":
		return "walship-archiver"
	case "prune":
		return "walship-pruner"
	default: // restore, replica, wal-fetch, list, verify
		return "walship-restore"
	}
}

// repoRoot is the repository's root, the Dockerfile's build context.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Dir(filepath.Dir(file))
}

// TestCLIModel checks the help parser on flags whose shape is known, so
// that a change in the help's format fails here and not as odd errors.
func TestCLIModel(t *testing.T) {
	c := walshipCLI(t)
	for _, tc := range []struct {
		cmd, flag  string
		takesValue bool
		env        string
	}{
		{"archive", "slot", true, "WALSHIP_SLOT"},
		{"archive", "until-caught-up", false, "WALSHIP_UNTIL_CAUGHT_UP"},
		{"backup", "if-due", false, "WALSHIP_IF_DUE"},
		{"restore", "target-dir", true, "WALSHIP_TARGET_DIR"},
		{"prune", "dry-run", false, ""},
	} {
		fi, ok := c.commands[tc.cmd].flags[tc.flag]
		if !ok || fi.takesValue != tc.takesValue || (tc.env != "" && (len(fi.env) != 1 || fi.env[0] != tc.env)) {
			t.Errorf("walship %s --%s read as %+v (found %v), want value %v, env %q", tc.cmd, tc.flag, fi, ok, tc.takesValue, tc.env)
		}
	}
	if fi := c.global["repo"]; !fi.takesValue || len(fi.env) != 1 || fi.env[0] != "WALSHIP_REPO" {
		t.Errorf("global --repo read as %+v", fi)
	}
	if c.commands["wal-fetch"].args != 2 || c.commands["archive"].args != 0 {
		t.Errorf("positional arguments: wal-fetch %d, archive %d; want 2 and 0", c.commands["wal-fetch"].args, c.commands["archive"].args)
	}
	bad := [][]string{
		{"archive", "--no-such-flag"},
		{"archive", "--repo", "file:///x"}, // a global flag after the command
		{"no-such-command"},
		{"backup", "--if-due", "--schedule", "99 * * * *"},
		{"archive", "--stop-timeout", "soon"},
		{"--repo", "s3://b/p?user=x&nope=1", "list"},
		{"wal-fetch", "000000010000000000000001"},
	}
	for _, args := range bad {
		if _, err := c.check(args); err == nil {
			t.Errorf("check(%q) = nil, want an error", args)
		}
	}
	if err := c.checkEnv("archive", map[string]string{"WALSHIP_TARGET_DIR": "/x"}); err == nil {
		t.Error("WALSHIP_TARGET_DIR accepted for archive")
	}
	inv, err := c.check([]string{"--repo", "file:///r", "wal-fetch", "--prefetch=2", "%f", "%p"})
	if err != nil || inv.command != "wal-fetch" || inv.values["prefetch"] != "2" || inv.values["repo"] != "file:///r" {
		t.Errorf("check(wal-fetch) = %+v, %v", inv, err)
	}
}
