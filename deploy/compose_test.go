package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// strictYAML decodes v (already parsed, anchors and merges resolved) into
// out, refusing fields out does not know: a misspelt field fails here
// instead of being ignored.
func strictYAML(v any, out any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(out)
}

// checkRun checks one run of walship: its arguments (without the program)
// and environment. Every command needs a repository, and those that talk
// to PostgreSQL a connection (or PG* variables).
func checkRun(t *testing.T, where string, argv []string, env map[string]string) (invocation, bool) {
	t.Helper()
	c := walshipCLI(t)
	inv, err := c.check(argv)
	if err == nil {
		err = c.checkEnv(inv.command, env)
	}
	if err == nil && inv.values["repo"] == "" && env["WALSHIP_REPO"] == "" {
		err = fmt.Errorf("walship %s without --repo or WALSHIP_REPO", inv.command)
	}
	if err == nil && (inv.command == "archive" || inv.command == "backup") && inv.values["pg"] == "" && env["WALSHIP_PG"] == "" && env["PGHOST"] == "" {
		err = fmt.Errorf("walship %s without --pg, WALSHIP_PG or PGHOST", inv.command)
	}
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return inv, false
	}
	return inv, true
}

type composeFile struct {
	Name     string
	Services map[string]composeService
	Volumes  map[string]any
}

type composeService struct {
	Image       string
	Build       *composeBuild
	Command     []string
	Entrypoint  []string
	Environment map[string]string
	Volumes     []string
	Healthcheck *struct {
		Test     []string
		Interval string
		Timeout  string
		Retries  int
	}
	DependsOn map[string]struct {
		Condition string
	} `yaml:"depends_on"`
	Restart         string
	ReadOnly        bool     `yaml:"read_only"`
	CapDrop         []string `yaml:"cap_drop"`
	SecurityOpt     []string `yaml:"security_opt"`
	StopGracePeriod string   `yaml:"stop_grace_period"`
	User            string
	Tmpfs           []string
	ShmSize         string `yaml:"shm_size"`
	Profiles        []string
	Deploy          *struct {
		Resources struct {
			Limits struct {
				CPUs   string
				Memory string
			}
		}
	}
}

type composeBuild struct {
	Context, Dockerfile, Target string
	Args                        map[string]string
}

func TestCompose(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "deploy", "compose")
	raw, err := os.ReadFile(filepath.Join(dir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := yaml.Unmarshal(raw, &generic); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for k := range generic {
		if strings.HasPrefix(k, "x-") {
			delete(generic, k) // extension fields, for anchors
		}
	}
	var cf composeFile
	if err := strictYAML(generic, &cf); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}

	// Every ${VAR} the file needs is in .env.example.
	env := readEnvFile(t, filepath.Join(dir, ".env.example"))
	for _, m := range regexp.MustCompile(`[^$]\$\{([A-Za-z_][A-Za-z0-9_]*)`).FindAllSubmatch(raw, -1) {
		if _, ok := env[string(m[1])]; !ok {
			t.Errorf("compose.yaml uses ${%s}, which .env.example does not set", m[1])
		}
	}

	archivers := 0
	for name, s := range cf.Services {
		where := "compose service " + name
		for dep, d := range s.DependsOn {
			target, ok := cf.Services[dep]
			switch {
			case !ok:
				t.Errorf("%s depends on %s, which does not exist", where, dep)
			case d.Condition == "service_healthy" && target.Healthcheck == nil:
				t.Errorf("%s waits for %s to be healthy, which has no healthcheck", where, dep)
			case !slices.Contains([]string{"service_started", "service_healthy", "service_completed_successfully"}, d.Condition):
				t.Errorf("%s: condition %q", where, d.Condition)
			}
		}
		for _, v := range s.Volumes {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
					t.Errorf("%s mounts %s: %v", where, src, err)
				}
			} else if _, ok := cf.Volumes[src]; !ok {
				t.Errorf("%s mounts volume %s, which is not declared", where, src)
			}
		}
		if s.Build == nil {
			if err := pinned(s.Image); err != nil {
				t.Errorf("%s: %v", where, err)
			}
			continue
		}
		// A walship image built from deploy/Dockerfile.
		d, err := readDockerfile(filepath.Join(dir, s.Build.Context, s.Build.Dockerfile))
		if err != nil {
			t.Errorf("%s: build: %v", where, err)
			continue
		}
		st, ok := d.stage(s.Build.Target)
		if !ok || (s.Build.Target != "walship" && s.Build.Target != "restore") {
			t.Errorf("%s: build target %q: want walship or restore", where, s.Build.Target)
			continue
		}
		for arg := range s.Build.Args {
			if _, ok := d.globalArgs[arg]; !ok {
				t.Errorf("%s: build arg %s is not an ARG of the Dockerfile", where, arg)
			}
		}
		argv := s.Command
		if st.name == "restore" && !slices.Equal(s.Entrypoint, []string{walshipPath}) {
			t.Errorf("%s: the restore image starts PostgreSQL's entrypoint; set entrypoint [%s]", where, walshipPath)
		}
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: want read_only, cap_drop ALL and no-new-privileges", where)
		}
		inv, ok := checkRun(t, where, argv, s.Environment)
		if !ok {
			continue
		}
		checkPGBin(t, where, inv, st.name, s.Build.Args["PG_MAJOR"])
		if inv.values["start"] == "true" && !slices.Contains(s.Tmpfs, "/tmp") {
			t.Errorf("%s: restore --start needs a writable /tmp (its private socket directory)", where)
		}
		if inv.command == "archive" {
			archivers++
			grace, err := parseDuration(s.StopGracePeriod)
			if stop := walshipCLI(t).duration(t, inv, "stop-timeout"); err != nil || grace <= stop {
				t.Errorf("%s: stop_grace_period %q must exceed --stop-timeout %s", where, s.StopGracePeriod, stop)
			}
			if s.Restart != "unless-stopped" && s.Restart != "always" {
				t.Errorf("%s: restart %q: a continuous archiver restarts", where, s.Restart)
			}
		}
	}
	if archivers != 1 {
		t.Errorf("%d archivers in compose.yaml, want 1 (they share the lease)", archivers)
	}

	// The init script parses and gets what it reads.
	script := filepath.Join(dir, "initdb", "10-walship.sh")
	if out, err := exec.Command("sh", "-n", script).CombinedOutput(); err != nil {
		t.Errorf("%s: %v\n%s", script, err, out)
	}
	body, _ := os.ReadFile(script)
	for _, m := range regexp.MustCompile(`\$([A-Z_][A-Z0-9_]*)`).FindAllSubmatch(body, -1) {
		v := string(m[1])
		if _, ok := cf.Services["postgres"].Environment[v]; !ok && v != "POSTGRES_USER" && v != "PGDATA" {
			t.Errorf("initdb script reads $%s, which the postgres service does not set", v)
		}
	}
}

// checkPGBin checks a restore --start: it needs the restore image, whose
// PostgreSQL must be the --pg-bin it names.
func checkPGBin(t *testing.T, where string, inv invocation, variant, major string) {
	t.Helper()
	if inv.values["start"] != "true" {
		return
	}
	if variant != "restore" {
		t.Errorf("%s: restore --start runs postgres: use the restore image", where)
		return
	}
	if want := "/usr/lib/postgresql/" + major + "/bin"; inv.values["pg-bin"] != want {
		t.Errorf("%s: --pg-bin %q, want %s (the image's PostgreSQL %s)", where, inv.values["pg-bin"], want, major)
	}
}

// parseDuration reads compose's and systemd's "90s", "1m30s" or "90".
func parseDuration(s string) (time.Duration, error) {
	if regexp.MustCompile(`^\d+$`).MatchString(s) {
		s += "s"
	}
	return time.ParseDuration(s)
}

func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Errorf("%s: %q is not NAME=value", path, l)
			continue
		}
		env[k] = v
	}
	return env
}
