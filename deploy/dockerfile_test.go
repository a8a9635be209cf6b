package deploy

import (
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// The version stamped into the test build, to see -X main.version work.
const testVersion = "deploytest"

// builtArgv is the go build command the Dockerfile ran, as run here.
var builtArgv []string

// walshipPath is where both images hold the binary: restore and replica
// write restore_command with it, so it must be the same in each.
const walshipPath = "/usr/local/bin/walship"

type instruction struct {
	cmd  string // FROM, RUN, ...
	args string
}

type stage struct {
	name, base string
	instr      []instruction
}

type dockerfile struct {
	globalArgs map[string]string
	stages     []stage
}

func (d dockerfile) stage(name string) (stage, bool) {
	for _, s := range d.stages {
		if s.name == name {
			return s, true
		}
	}
	return stage{}, false
}

func readDockerfile(path string) (dockerfile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return dockerfile{}, err
	}
	d := dockerfile{globalArgs: map[string]string{}}
	var logical []string
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if cur.Len() == 0 && (t == "" || strings.HasPrefix(t, "#")) {
			continue
		}
		if strings.HasPrefix(t, "#") {
			continue // a comment inside a continued instruction
		}
		if strings.HasSuffix(t, `\`) {
			cur.WriteString(strings.TrimSuffix(t, `\`) + " ")
			continue
		}
		cur.WriteString(t)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	for _, l := range logical {
		cmd, args, _ := strings.Cut(l, " ")
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(args)}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--platform=") })
			s := stage{base: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			} else if len(f) != 1 {
				return d, fmt.Errorf("FROM %s: want IMAGE [AS NAME]", in.args)
			}
			d.stages = append(d.stages, s)
		case len(d.stages) == 0 && in.cmd == "ARG":
			name, def, _ := strings.Cut(in.args, "=")
			d.globalArgs[name] = def
		case len(d.stages) == 0:
			return d, fmt.Errorf("%s before the first FROM", in.cmd)
		default:
			d.stages[len(d.stages)-1].instr = append(d.stages[len(d.stages)-1].instr, in)
		}
	}
	return d, nil
}

// words splits a shell command into words as sh would for the simple
// commands a RUN may hold: quotes, backslashes and $VAR / ${VAR} from vars.
// Anything else a shell does (pipes, &&, globs) is refused, so that what
// the test runs is exactly what the Dockerfile says.
func words(s string, vars map[string]string) ([]string, error) {
	var out []string
	var w strings.Builder
	inWord, quote := false, byte(0)
	expand := func(i int) (int, error) {
		j := i + 1
		var name string
		if j < len(s) && s[j] == '{' {
			k := strings.IndexByte(s[j:], '}')
			if k < 0 {
				return 0, fmt.Errorf("unclosed ${ in %q", s)
			}
			name, j = s[j+1:j+k], j+k+1
		} else {
			k := j
			for k < len(s) && (s[k] == '_' || s[k] >= 'A' && s[k] <= 'Z' || s[k] >= 'a' && s[k] <= 'z' || s[k] >= '0' && s[k] <= '9') {
				k++
			}
			name, j = s[j:k], k
		}
		v, ok := vars[name]
		if !ok {
			return 0, fmt.Errorf("$%s is not an ARG", name)
		}
		w.WriteString(v)
		inWord = true
		return j, nil
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				w.WriteByte(c)
			}
			i++
		case c == '$' && quote != '\'':
			j, err := expand(i)
			if err != nil {
				return nil, err
			}
			i = j
		case quote == '"':
			if c == '"' {
				quote = 0
			} else {
				w.WriteByte(c)
			}
			i++
		case c == '\'' || c == '"':
			quote, inWord = c, true
			i++
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, w.String())
				w.Reset()
				inWord = false
			}
			i++
		case strings.IndexByte("|&;<>()`*?[", c) >= 0:
			return nil, fmt.Errorf("%q: more than a simple command", s)
		default:
			w.WriteByte(c)
			inWord = true
			i++
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unclosed quote in %q", s)
	}
	if inWord {
		out = append(out, w.String())
	}
	return out, nil
}

var envAssign = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// buildAsDockerfile runs the RUN steps of the Dockerfile's build stage in
// the repository root (the build context, which the stage copies to its
// WORKDIR), for this machine's platform, with the output moved to dir.
func buildAsDockerfile(dir string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	d, err := readDockerfile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		return "", err
	}
	build, ok := d.stage("build")
	if !ok {
		return "", fmt.Errorf("no stage named build")
	}
	vars := map[string]string{}
	for _, in := range build.instr {
		if in.cmd == "ARG" {
			name, def, _ := strings.Cut(in.args, "=")
			vars[name] = def
		}
	}
	vars["TARGETOS"], vars["TARGETARCH"], vars["VERSION"] = runtime.GOOS, runtime.GOARCH, testVersion
	bin := filepath.Join(dir, "walship")
	built := false
	for _, in := range build.instr {
		if in.cmd != "RUN" {
			continue
		}
		f := strings.Fields(in.args)
		for len(f) > 0 && strings.HasPrefix(f[0], "--mount=") {
			f = f[1:] // caches only
		}
		argv, err := words(strings.Join(f, " "), vars)
		if err != nil {
			return "", fmt.Errorf("RUN %s: %v", in.args, err)
		}
		// In the image the context has no .git (Dockerfile.dockerignore).
		env := append(os.Environ(), "GOFLAGS=-buildvcs=false")
		for len(argv) > 0 && envAssign.MatchString(argv[0]) {
			env = append(env, argv[0])
			argv = argv[1:]
		}
		if len(argv) < 2 || argv[0] != "go" {
			return "", fmt.Errorf("RUN %s: only go commands run outside Docker; this test would need to learn the new step", in.args)
		}
		if argv[1] == "build" {
			i := slices.Index(argv, "-o")
			if i < 0 || i+1 >= len(argv) {
				return "", fmt.Errorf("RUN %s: no -o", in.args)
			}
			argv[i+1] = bin
			built = true
			builtArgv = slices.Clone(argv)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir, cmd.Env = root, env
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
	if !built {
		return "", fmt.Errorf("the build stage runs no go build")
	}
	return bin, nil
}

// TestDockerfileBuildsAStaticBinary runs the build stage's steps outside
// Docker and checks that what they make would run on distroless/static:
// statically linked, no interpreter, no shared libraries, stripped, with
// the flags of `make build`.
func TestDockerfileBuildsAStaticBinary(t *testing.T) {
	bin := walshipBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("program header %v: the binary is dynamically linked", p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("shared libraries needed: %v (%v)", libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary has a symbol table: -s is missing")
	}
	for _, s := range f.Sections {
		if strings.Contains(s.Name, "debug_info") {
			t.Errorf("the binary has %s: -w is missing", s.Name)
		}
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	// -ldflags is not recorded with -trimpath: compare the command's.
	want := map[string]string{"CGO_ENABLED": "0", "-trimpath": "true", "GOOS": runtime.GOOS, "GOARCH": runtime.GOARCH}
	for k, v := range want {
		if settings[k] != v {
			t.Errorf("build setting %s = %q, want %q (as make build)", k, settings[k], v)
		}
	}
	if i := slices.Index(builtArgv, "-ldflags"); i < 0 || i+1 >= len(builtArgv) || builtArgv[i+1] != makeLDFlags(t, testVersion) {
		t.Errorf("go build %q: want -ldflags %q, as make build", builtArgv, makeLDFlags(t, testVersion))
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), testVersion) {
		t.Errorf("walship --version = %q, %v; want it to show %s (-X main.version)", out, err, testVersion)
	}
}

// makeLDFlags is the Makefile's LDFLAGS with VERSION set.
func makeLDFlags(t *testing.T, version string) string {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^LDFLAGS\s*:=\s*(.*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no LDFLAGS in the Makefile")
	}
	return strings.ReplaceAll(strings.TrimSpace(string(m[1])), "$(VERSION)", version)
}

// TestDockerfileStages checks the images the Dockerfile makes: pinned
// bases, Go new enough for go.mod, the binary copied from where the build
// put it to the same path in both images, and a non-root minimal image.
func TestDockerfileStages(t *testing.T) {
	root := repoRoot(t)
	d, err := readDockerfile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	expand := func(s string) string {
		return os.Expand(s, func(k string) string { return d.globalArgs[k] })
	}
	for _, s := range d.stages {
		if err := pinned(expand(s.base)); err != nil {
			t.Errorf("stage %s: %v", s.name, err)
		}
	}
	build, _ := d.stage("build")
	goMod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(goMod)
	if goLine == nil || !strings.HasPrefix(expand(build.base), "golang:"+string(goLine[1])) {
		t.Errorf("build stage FROM %s: want golang:%s (go.mod's go line)", expand(build.base), goLine[1])
	}
	var out string
	for _, in := range build.instr {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			out = regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(in.args)[1]
		}
	}
	for _, name := range []string{"walship", "restore"} {
		s, ok := d.stage(name)
		if !ok {
			t.Errorf("no stage %s", name)
			continue
		}
		want := "--from=build " + out + " " + walshipPath
		if !slices.ContainsFunc(s.instr, func(in instruction) bool { return in.cmd == "COPY" && in.args == want }) {
			t.Errorf("stage %s: want COPY %s", name, want)
		}
	}
	min, _ := d.stage("walship")
	for _, in := range min.instr {
		switch in.cmd {
		case "USER":
			if u := strings.Split(in.args, ":")[0]; u == "0" || u == "root" {
				t.Errorf("stage walship runs as %s", in.args)
			}
		case "ENTRYPOINT":
			if in.args != `["`+walshipPath+`"]` {
				t.Errorf("stage walship: ENTRYPOINT %s, want [%q]", in.args, walshipPath)
			}
		case "RUN":
			t.Errorf("stage walship: RUN %s: the minimal image has no shell", in.args)
		}
	}
	if !slices.ContainsFunc(min.instr, func(in instruction) bool { return in.cmd == "USER" }) {
		t.Error("stage walship sets no USER")
	}
}

// TestDockerignoreKeepsTheBuild checks that Dockerfile.dockerignore leaves
// in the context every file the build needs: go.mod, go.sum and the
// packages ./cmd/walship imports.
func TestDockerignoreKeepsTheBuild(t *testing.T) {
	root := repoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "deploy", "Dockerfile.dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			if strings.HasPrefix(l, "!") {
				t.Fatalf("pattern %q: exceptions are not modelled by this test", l)
			}
			patterns = append(patterns, l)
		}
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "./cmd/walship")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	need := []string{"go.mod", "go.sum"}
	for _, dir := range strings.Fields(string(out)) {
		rel, _ := filepath.Rel(root, dir)
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			need = append(need, filepath.Join(rel, filepath.Base(f)))
		}
	}
	if len(need) < 10 {
		t.Fatalf("go list found only %v", need)
	}
	for _, p := range need {
		if pat := ignored(patterns, p); pat != "" {
			t.Errorf("%s is needed by the build but Dockerfile.dockerignore's %q leaves it out", p, pat)
		}
	}
	if ignored(patterns, ".git/config") == "" || ignored(patterns, "deploy/Dockerfile") == "" {
		t.Error("Dockerfile.dockerignore should leave out .git and deploy")
	}
}

// ignored returns the pattern that excludes path (or one of its parents).
func ignored(patterns []string, path string) string {
	parts := strings.Split(filepath.ToSlash(path), "/")
	for _, pat := range patterns {
		any := strings.HasPrefix(pat, "**/")
		p := strings.TrimPrefix(pat, "**/")
		for i := 1; i <= len(parts); i++ {
			cands := []string{strings.Join(parts[:i], "/")}
			if any {
				cands = append(cands, parts[i-1])
			}
			for _, c := range cands {
				if ok, _ := filepath.Match(p, c); ok {
					return pat
				}
			}
		}
	}
	return ""
}

// pinned checks that an image reference names a tag, not latest.
func pinned(ref string) error {
	name, tag := ref, ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		name, tag = ref[:i], ref[i+1:]
	}
	if !regexp.MustCompile(`^[a-z0-9]+([._/-][a-z0-9]+)*$`).MatchString(name) {
		return fmt.Errorf("image %q: malformed name", ref)
	}
	if tag == "" || tag == "latest" {
		return fmt.Errorf("image %q: pin a tag (not latest)", ref)
	}
	return nil
}
