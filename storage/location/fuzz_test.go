package location

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
	"unicode"

	"github.com/walship/walship/storage"
)

// FuzzParse checks that Parse never panics on a --repo value, that its
// errors are *Error, and that what it accepts is a repository walship can
// open: an absolute clean directory, or a valid bucket and prefix.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"file:///var/lib/walship", "file://localhost/var/lib/walship/", "file:///a%3Fb", "file:///", "file:///a/../b", "file:relative",
		"s3://my-bucket", "s3://my-bucket/pg/main/?region=eu-west-1",
		"s3://bkt/p?endpoint=http://127.0.0.1:9000&checksum=when_required&part-size=16MiB&concurrency=8",
		"s3://bkt?endpoint=https://s3.example.test&path-style=false", "s3://bkt?endpoint=http://u:p@h", "s3://bkt?endpoint=http%3A%2F%2Fh",
		"s3://bkt/a//b", "s3://bkt/.hidden", "s3://bkt?x=%zz", "s3://bkt#frag", "s3://AKIAEXAMPLE:s3cr3t@bkt/p", "s3://bkt?part-size=99999999999GiB",
		"minio://127.0.0.1:9000/bkt/a/b?secure=false", "minio://minio.internal/bkt", "minio://h:99999/bkt", "minio://[::1]:9000/bkt/a@b",
		"http://[::1", "/var/lib/walship", "", " ", "ftp://host/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		loc, err := Parse(raw)
		if err != nil {
			var le *Error
			if !errors.As(err, &le) {
				t.Fatalf("Parse(%q) = %v, want a *location.Error", raw, err)
			}
			return
		}
		validPrefix := func(p string) bool { return p == "" || storage.ValidKey(p) == nil }
		switch loc.Scheme {
		case "file":
			if !path.IsAbs(loc.Dir) || path.Clean(loc.Dir) != loc.Dir || loc.Dir == "/" {
				t.Fatalf("Parse(%q): directory %q", raw, loc.Dir)
			}
		case "s3":
			if validBucket(loc.S3.Bucket) != nil || !validPrefix(loc.S3.Prefix) {
				t.Fatalf("Parse(%q): bucket %q, prefix %q", raw, loc.S3.Bucket, loc.S3.Prefix)
			}
			if e := loc.S3.Endpoint; e != "" {
				if u, err := url.Parse(e); err != nil || u.User != nil || u.Host == "" || u.Path != "" {
					t.Fatalf("Parse(%q): endpoint %q", raw, e)
				}
			}
		case "minio":
			if loc.MinIO.Endpoint == "" || validBucket(loc.MinIO.Bucket) != nil || !validPrefix(loc.MinIO.Prefix) {
				t.Fatalf("Parse(%q): %+v", raw, loc.MinIO)
			}
		default:
			t.Fatalf("Parse(%q): scheme %q", raw, loc.Scheme)
		}
	})
}

// FuzzParseSecret checks that a password written in a repository URL, or
// in the URL of its endpoint, never shows in the error that refuses it:
// the error must not change when the password's letters and digits do.
func FuzzParseSecret(f *testing.F) {
	f.Add(uint8(0), "AKIAEXAMPLE", "s3cr3t", "bkt/p")
	f.Add(uint8(1), "minioadmin", "minio-secret", "127.0.0.1:9000/bkt/p")
	f.Add(uint8(2), "", "s3cr3t", "/var/lib/walship")
	f.Add(uint8(3), "u", "pass word", "bkt")
	f.Add(uint8(4), "u", "s3cr3t", "h:9000")
	f.Add(uint8(1), "u", "s3cr3t", "h:port/bkt")
	f.Fuzz(func(t *testing.T, form uint8, user, password, rest string) {
		if strings.ContainsAny(user, ":/?#@") || strings.ContainsAny(password, "/?#@") || shift(password) == password {
			return // not a user and password, as a URL spells them
		}
		if form%6 == 4 && strings.ContainsAny(user+password, "&;=+%") {
			return // not a user and password, as a query spells them
		}
		build := func(pw string) string {
			switch form % 6 {
			case 0:
				return "s3://" + user + ":" + pw + "@" + rest
			case 1:
				return "minio://" + user + ":" + pw + "@" + rest
			case 2:
				return "file://" + user + ":" + pw + "@" + rest
			case 3:
				return "https://" + user + ":" + pw + "@" + rest
			case 4:
				return "s3://bkt?endpoint=http://" + user + ":" + pw + "@" + rest
			}
			return "s3://bkt?endpoint=" + url.QueryEscape("http://"+user+":"+pw+"@"+rest)
		}
		_, err := Parse(build(password))
		_, err2 := Parse(build(shift(password)))
		if (err == nil) != (err2 == nil) {
			t.Fatalf("Parse(%q) = %v but Parse(%q) = %v", build(password), err, build(shift(password)), err2)
		}
		if err != nil && err.Error() != err2.Error() {
			t.Fatalf("the password shows in the error:\n%v\n%v", err, err2)
		}
	})
}

// shift changes each letter and digit of s into another of its kind,
// hexadecimal digits into hexadecimal digits, so that what s spells in a
// URL keeps its shape.
func shift(s string) string {
	b := []byte(s) // bytes, not runes: invalid UTF-8 stays as it is
	for i, c := range b {
		for _, class := range []string{"0123456789", "abcdef", "ghijklmnopqrstuvwxyz", "ABCDEF", "GHIJKLMNOPQRSTUVWXYZ"} {
			if j := strings.IndexByte(class, c); j >= 0 {
				b[i] = class[(j+1)%len(class)]
				break
			}
		}
	}
	return string(b)
}

// FuzzParseSize checks that ParseSize never panics on a --part-size or
// --memory-limit value and that what it accepts is a byte count that does
// not overflow, spelled the way the unit says.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "5", "5B", "2kB", "8MiB", "1GB", "3GiB", "8 MiB", "+8MiB", "", "MiB", "-1", "1.5MiB", "1TiB", "99999999999GiB", "4611686018427387904", "9223372036854775807B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 || n > 1<<62 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
		num := strings.TrimRightFunc(s, func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune("BkKMGi", r) })
		if num == "" || strings.Trim(num, "+-0123456789") != "" {
			t.Fatalf("ParseSize(%q) = %d from a number %q", s, n, num)
		}
	})
}
