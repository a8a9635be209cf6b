package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/storage/location"
)

// unit is a systemd unit file: section to key to values (keys repeat).
type unit map[string]map[string][]string

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func readUnit(path string) (unit, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	u := unit{}
	section := ""
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("%s:%d: %q is not key=value in a section", path, n+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u, nil
}

// systemdWords splits ExecStart= as systemd does for these simple lines:
// double quotes group, and specifiers are not used.
func systemdWords(s string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`"([^"]*)"|(\S+)`).FindAllStringSubmatch(s, -1) {
		if m[2] != "" {
			out = append(out, m[2])
		} else {
			out = append(out, m[1])
		}
	}
	return out
}

// TestSystemdUnits checks the units: every service runs walship with flags
// and variables that exist, under the role its command needs, the archiver
// stops within its timeout, and every timer starts an existing service.
// With systemd-analyze on the machine, systemd itself checks them too.
func TestSystemdUnits(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "deploy", "systemd")
	files, _ := filepath.Glob(filepath.Join(dir, "*.*"))
	services := 0
	for _, f := range files {
		name := filepath.Base(f)
		switch filepath.Ext(name) {
		case ".service":
			services++
			checkService(t, dir, name)
		case ".timer":
			u, err := readUnit(f)
			if err != nil {
				t.Fatal(err)
			}
			target := u.get("Timer", "Unit")
			if target == "" {
				target = strings.TrimSuffix(name, ".timer") + ".service"
			}
			if _, err := os.Stat(filepath.Join(dir, target)); err != nil {
				t.Errorf("%s starts %s: %v", name, target, err)
			}
			if u.get("Timer", "OnCalendar") == "" || u.get("Timer", "Persistent") != "true" || u.get("Install", "WantedBy") != "timers.target" {
				t.Errorf("%s: want OnCalendar, Persistent=true (catch up after downtime) and WantedBy=timers.target", name)
			}
		}
	}
	if services < 3 {
		t.Errorf("%d services, want the archiver, backup and prune", services)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: systemd's own check skipped")
		return
	}
	var units []string
	for _, f := range files {
		if ext := filepath.Ext(f); ext == ".service" || ext == ".timer" {
			units = append(units, f)
		}
	}
	out, _ := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// walship is not installed on this machine.
		if line == "" || strings.HasSuffix(line, "Command "+walshipPath+" is not executable: No such file or directory") {
			continue
		}
		t.Errorf("systemd-analyze verify: %s", line)
	}
	for _, f := range files {
		if filepath.Ext(f) != ".timer" {
			continue
		}
		u, _ := readUnit(f)
		for _, cal := range u["Timer"]["OnCalendar"] {
			if out, err := exec.Command(analyze, "calendar", cal).CombinedOutput(); err != nil {
				t.Errorf("%s: OnCalendar=%s: %v\n%s", filepath.Base(f), cal, err, out)
			}
		}
	}
}

func checkService(t *testing.T, dir, name string) {
	t.Helper()
	u, err := readUnit(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	svc := u["Service"]
	argv := systemdWords(u.get("Service", "ExecStart"))
	if len(argv) == 0 || argv[0] != walshipPath {
		t.Errorf("%s: ExecStart %q: want %s", name, argv, walshipPath)
		return
	}
	env := map[string]string{}
	for _, ef := range svc["EnvironmentFile"] {
		// /etc/walship/walship.env is installed from walship.env.example.
		example := filepath.Join(dir, filepath.Base(strings.TrimPrefix(ef, "-"))+".example")
		for k, v := range readEnvFile(t, example) {
			env[k] = v
		}
	}
	for _, e := range svc["Environment"] {
		for _, kv := range systemdWords(e) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	inv, ok := checkRun(t, name, argv[1:], env)
	if !ok {
		return
	}
	if u.get("Service", "User") == "" || u.get("Service", "User") == "root" || u.get("Service", "NoNewPrivileges") != "yes" || u.get("Service", "ProtectSystem") != "strict" {
		t.Errorf("%s: want a non-root User, NoNewPrivileges=yes and ProtectSystem=strict", name)
	}
	if strings.Contains(env["PGPASSFILE"], "%d/") {
		if len(svc["LoadCredential"]) == 0 {
			t.Errorf("%s: PGPASSFILE in the credentials directory, but no LoadCredential", name)
		}
	}
	if inv.command == "prune" && (env["PGPASSFILE"] != "" || len(svc["LoadCredential"]) > 0) {
		t.Errorf("%s: prune needs no database password", name)
	}
	if loc, err := location.Parse(env["WALSHIP_REPO"]); err == nil && loc.Scheme == "s3" {
		checkRepoMatchesIAM(t, name, loc)
	}
	switch inv.command {
	case "archive":
		stop := walshipCLI(t).duration(t, inv, "stop-timeout")
		timeout, err := parseDuration(u.get("Service", "TimeoutStopSec"))
		if err != nil || timeout <= stop {
			t.Errorf("%s: TimeoutStopSec=%s must exceed --stop-timeout %s", name, u.get("Service", "TimeoutStopSec"), stop)
		}
		if u.get("Service", "KillSignal") != "SIGTERM" || u.get("Service", "Restart") != "always" || inv.values["wait"] != "true" {
			t.Errorf("%s: want KillSignal=SIGTERM, Restart=always and --wait (a restart waits for the old lease)", name)
		}
		if u.get("Install", "WantedBy") != "multi-user.target" {
			t.Errorf("%s: the archiver starts at boot", name)
		}
	default:
		if u.get("Service", "Type") != "oneshot" {
			t.Errorf("%s: walship %s runs to completion: Type=oneshot", name, inv.command)
		}
		if _, err := os.Stat(filepath.Join(dir, strings.TrimSuffix(name, ".service")+".timer")); err != nil {
			t.Errorf("%s has no timer: %v", name, err)
		}
		if d, err := parseDuration(u.get("Service", "TimeoutStartSec")); err != nil || d < time.Hour {
			t.Errorf("%s: TimeoutStartSec=%s: a backup or prune may run for hours", name, u.get("Service", "TimeoutStartSec"))
		}
	}
}
