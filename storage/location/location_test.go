package location

import (
	"errors"
	"strings"
	"testing"

	"github.com/walship/walship/storage/s3"
)

func TestParseGood(t *testing.T) {
	cases := []struct {
		raw   string
		want  string // String() of the result
		check func(t *testing.T, l Location)
	}{
		{raw: "file:///var/lib/walship", want: "file:///var/lib/walship"},
		{raw: "file://localhost/var/lib/walship/", want: "file:///var/lib/walship"},
		{raw: "s3://my-bucket", want: "s3://my-bucket", check: func(t *testing.T, l Location) {
			if l.S3.PathStyle || l.S3.Endpoint != "" || l.S3.Prefix != "" {
				t.Errorf("AWS defaults: got %+v", l.S3)
			}
		}},
		{raw: "s3://my-bucket/pg/main/?region=eu-west-1", want: "s3://my-bucket/pg/main", check: func(t *testing.T, l Location) {
			if l.S3.Region != "eu-west-1" || l.S3.Prefix != "pg/main" {
				t.Errorf("got %+v", l.S3)
			}
		}},
		{raw: "s3://bkt/p?endpoint=http://127.0.0.1:9000&checksum=when_required&part-size=16MiB&concurrency=8", want: "s3://bkt/p?endpoint=http%3A%2F%2F127.0.0.1%3A9000", check: func(t *testing.T, l Location) {
			c := l.S3
			if !c.PathStyle || c.Checksum != s3.ChecksumWhenRequired || c.PartSize != 16<<20 || c.Concurrency != 8 {
				t.Errorf("got %+v", c)
			}
		}},
		{raw: "s3://bkt?endpoint=https://s3.example.test&path-style=false", want: "s3://bkt?endpoint=https%3A%2F%2Fs3.example.test", check: func(t *testing.T, l Location) {
			if l.S3.PathStyle {
				t.Error("path-style=false ignored")
			}
		}},
		{raw: "minio://127.0.0.1:9000/bkt/a/b?secure=false", want: "minio://127.0.0.1:9000/bkt/a/b", check: func(t *testing.T, l Location) {
			if l.MinIO.Secure || l.MinIO.Bucket != "bkt" || l.MinIO.Prefix != "a/b" {
				t.Errorf("got %+v", l.MinIO)
			}
		}},
		{raw: "minio://minio.internal/bkt", want: "minio://minio.internal/bkt", check: func(t *testing.T, l Location) {
			if !l.MinIO.Secure {
				t.Error("minio:// must default to TLS")
			}
		}},
	}
	for _, c := range cases {
		l, err := Parse(c.raw)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.raw, err)
			continue
		}
		if got := l.String(); got != c.want {
			t.Errorf("Parse(%q).String() = %q, want %q", c.raw, got, c.want)
		}
		if c.check != nil {
			c.check(t, l)
		}
	}
}

func TestParseBad(t *testing.T) {
	cases := []struct{ raw, want string }{
		{"", "empty"},
		{"   ", "empty"},
		{"/var/lib/walship", "write file:///var/lib/walship"},
		{"var/lib", "no scheme"},
		{"ftp://host/x", `unknown scheme "ftp"`},
		{"file://host/x", "three slashes"},
		{"file:relative", "two slashes"},
		{"file:///", "no directory"},
		{"file:///a/../b", "not clean"},
		{"file:///a?x=1", `unknown parameter "x"`},
		{"s3://", "no bucket"},
		{"s3:///prefix", "no bucket"},
		{"s3://AB", "3 to 63"},
		{"s3://Bucket", "lowercase"},
		{"s3://-bucket", "starts and ends"},
		{"s3://bucket_x", "lowercase"},
		{"s3://bkt/a//b", "prefix"},
		{"s3://bkt//a", "prefix"},
		{"s3://bkt?endpoint=", `parameter "endpoint" has no value`},
		{"s3://bkt?region=", `parameter "region" has no value`},
		{"s3://bkt?endpoint", `parameter "endpoint" has no value`},
		{"minio://h:9000/bkt?secure=", `parameter "secure" has no value`},
		{"s3://bkt/a/../b", "prefix"},
		{"s3://bkt/.hidden", "prefix"},
		{"s3://bkt?endpoint=localhost:9000", "want http://host:port"},
		{"s3://bkt?endpoint=http://u:p@h", "credentials"},
		{"s3://bkt?endpoint=http://h/bkt", "only scheme, host and port"},
		{"s3://bkt?path-style=maybe", "want true or false"},
		{"s3://bkt?checksum=crc32", "when_supported or when_required"},
		{"s3://bkt?part-size=1MiB", "5MiB to 5GiB"},
		{"s3://bkt?part-size=8XB", "unknown unit"},
		{"s3://bkt?part-size=lots", "byte count"},
		{"s3://bkt?concurrency=0", "1 to 64"},
		{"s3://bkt?region=a&region=b", "given 2 times"},
		{"s3://bkt?regoin=x", `unknown parameter "regoin"`},
		{"s3://bkt?x=%zz", "query"},
		{"s3://bkt#frag", "fragment"},
		{"s3://AKIAEXAMPLE:s3cr3t@bkt/p", "credentials"},
		{"minio://", "no host"},
		{"minio://h:9000", "no bucket"},
		{"minio://h:9000/", "no bucket"},
		{"minio://h:99999/bkt", "not a port"},
		{"minio://h/bkt?secure=yes please", "want true or false"},
		{"minio://h/bkt?endpoint=x", "unknown parameter"},
		{"http://[::1", "missing ']'"},
	}
	for _, c := range cases {
		_, err := Parse(c.raw)
		var le *Error
		if !errors.As(err, &le) {
			t.Errorf("Parse(%q) = %v, want a *location.Error", c.raw, err)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %q, want it to say %q", c.raw, err, c.want)
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("Parse(%q) error shows the password: %q", c.raw, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "5": 5, "5B": 5, "2kB": 2000, "8MiB": 8 << 20, "1GB": 1e9, "3GiB": 3 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5MiB", "1TiB", "99999999999GiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
}
