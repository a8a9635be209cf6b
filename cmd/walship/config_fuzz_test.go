package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzReadSettings checks that readSettings never panics on a settings
// file and that its errors name files, lines and variables, never values:
// an error must not change when the letters and digits of every value
// change, nor those of a line that names no variable (a connection string
// pasted without WALSHIP_PG=, say).
func FuzzReadSettings(f *testing.F) {
	for _, s := range []string{
		"# walship settings\n\nWALSHIP_REPO=file:///var/lib/walship\nexport WALSHIP_BACKUP_CONCURRENCY = '99'\nPGPASSWORD=\"from the file\"\n",
		"WALSHIP_PG_FILE=/run/secrets/pg\r\nAWS_SECRET_ACCESS_KEY=abc\r\n",
		"WALSHIP_CONFIG=/etc/other\n", "WALSHIP_NOPE=1\n", "HOME=/root\n", "=value\n", "PGPASSWORD hunter2\n",
		"host=h password=hunter2\n",
		"WALSHIP_PG='unterminated\n", "export\n", "export =x\n", "  \t\n#=\n", strings.Repeat("x", 70000) + "\n",
	} {
		f.Add([]byte(s))
	}
	known := envVarsOf(newApp(io.Discard, io.Discard))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "walship.conf")
		read := func(b []byte) ([][2]string, string) {
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			kv, err := readSettings(path, known)
			if err != nil {
				return nil, err.Error()
			}
			return kv, ""
		}
		kv, msg := read(data)
		other := hideValues(data)
		kv2, msg2 := read(other)
		if msg != msg2 {
			t.Fatalf("the error depends on a value:\n%s\n%s", msg, msg2)
		}
		if len(kv) != len(kv2) {
			t.Fatalf("%d settings, then %d once values changed", len(kv), len(kv2))
		}
		for i := range kv {
			if kv[i][0] != kv2[i][0] || shiftBytes(kv[i][1]) != kv2[i][1] {
				t.Fatalf("setting %q=%q read as %q=%q once its value changed", kv[i][0], kv[i][1], kv2[i][0], kv2[i][1])
			}
		}
	})
}

// hideValues changes the letters and digits of every value of a settings
// file, and of every line that names no variable, the way readSettings
// splits lines into names and values.
func hideValues(data []byte) []byte {
	out := slices.Clone(data)
	start := 0
	for start <= len(out) {
		end := bytes.IndexByte(out[start:], '\n')
		if end < 0 {
			end = len(out)
		} else {
			end += start
		}
		line := string(out[start:end])
		t := strings.TrimSpace(line)
		if t != "" && t[0] != '#' {
			from := start + strings.Index(line, t) + len(t) - len(strings.TrimPrefix(t, "export ")) // the name
			name, _, ok := strings.Cut(strings.TrimPrefix(t, "export "), "=")
			if ok && validName(strings.TrimSpace(name)) {
				from += len(name) + 1 // the value
			}
			copy(out[from:end], shiftBytes(string(out[from:end])))
		}
		start = end + 1
	}
	return out
}

// shiftBytes changes each letter and digit of s into another of its kind.
func shiftBytes(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
			b[i] = '0' + (c-'0'+1)%10
		case c >= 'a' && c <= 'z':
			b[i] = 'a' + (c-'a'+1)%26
		case c >= 'A' && c <= 'Z':
			b[i] = 'A' + (c-'A'+1)%26
		}
	}
	return string(b)
}
