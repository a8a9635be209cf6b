package layout

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/walship/walship"

// layer names the group a package belongs to.
func layer(pkg string) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	top, _, _ := strings.Cut(rel, "/")
	return top
}

// allowed lists, for each layer, the layers of ours it may import besides
// itself. cmd composes everything; archiver, restore and scheduler never import
// each other; storage sits on internal; internal imports nothing above it.
var allowed = map[string][]string{
	"cmd":       {"archiver", "restore", "scheduler", "storage", "internal"},
	"archiver":  {"storage", "internal"},
	"restore":   {"storage", "internal"},
	"scheduler": {"storage", "internal"},
	"storage":   {"internal"},
	"internal":  {},
	"bench":     {"archiver", "restore", "scheduler", "storage", "internal"},
	"deploy":    {"archiver", "scheduler", "storage", "internal"},
}

// testOnly are packages that only tests may import.
var testOnly = []string{
	module + "/storage/storagetest",
	module + "/internal/pgtest",
	module + "/internal/miniotest",
	module + "/internal/clitest",
	module + "/internal/testlog",
	module + "/internal/testca",
	module + "/internal/faultproxy",
	module + "/internal/tcpproxy",
}

type pkg struct {
	ImportPath string
	Imports    []string
	Name       string
}

func TestImportDirections(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	for _, problem := range check(pkgs) {
		t.Error(problem)
	}
}

// TestCheckFindsViolations proves the checker on made-up packages.
func TestCheckFindsViolations(t *testing.T) {
	m := module + "/"
	bad := []pkg{
		{ImportPath: m + "archiver", Imports: []string{m + "restore"}},
		{ImportPath: m + "storage/s3", Imports: []string{m + "archiver"}},
		{ImportPath: m + "internal/wal", Imports: []string{m + "storage"}},
		{ImportPath: m + "restore", Imports: []string{m + "internal/pgtest"}},
		{ImportPath: m + "storage/codec", Imports: []string{m + "internal/wal"}},
		{ImportPath: m + "tools/x"},
	}
	if got := check(bad); len(got) != len(bad) {
		t.Errorf("check found %d problems, want %d:\n%s", len(got), len(bad), strings.Join(got, "\n"))
	}
	good := []pkg{
		{ImportPath: m + "cmd/walship", Imports: []string{m + "archiver", m + "storage/s3", "fmt"}},
		{ImportPath: m + "archiver", Imports: []string{m + "storage", m + "internal/wal"}},
		{ImportPath: m + "storage/s3", Imports: []string{m + "storage", m + "internal/multipart"}},
		{ImportPath: m + "internal/pgtest", Imports: []string{m + "internal/wal"}},
	}
	if got := check(good); len(got) != 0 {
		t.Errorf("check found problems in allowed imports:\n%s", strings.Join(got, "\n"))
	}
}

// check returns one line per import that breaks the layout.
func check(pkgs []pkg) []string {
	var problems []string
	for _, p := range pkgs {
		from := layer(p.ImportPath)
		ok, known := allowed[from]
		if !known {
			problems = append(problems, p.ImportPath+" is outside the layout of DESIGN.md (cmd, archiver, restore, scheduler, storage, internal, bench, deploy)")
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			if to := layer(imp); to != from && !contains(ok, to) {
				problems = append(problems, p.ImportPath+" imports "+imp+": "+from+" may not import "+to)
			}
			if contains(testOnly, imp) && !isTestHelper(p.ImportPath) {
				problems = append(problems, p.ImportPath+" imports the test helper "+imp+" outside its tests")
			}
			if p.ImportPath == module+"/storage/codec" {
				problems = append(problems, "storage/codec imports "+imp+"; it must stand alone")
			}
		}
	}
	return problems
}

// isTestHelper reports whether p may use the test services: the helpers
// themselves and the benchmark programs, which run them too.
func isTestHelper(p string) bool {
	return contains(testOnly, p) || strings.HasPrefix(p, module+"/internal/miniotest/") || strings.HasPrefix(p, module+"/bench/")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
