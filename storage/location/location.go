package location

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/file"
	"github.com/walship/walship/storage/minio"
	"github.com/walship/walship/storage/s3"
)

// Location is a parsed repository URL.
type Location struct {
	Scheme string // "file", "s3" or "minio"
	Dir    string // file: the repository directory
	S3     s3.Config
	MinIO  minio.Config
}

// Error is a malformed repository URL; its message says what to write
// instead.
type Error struct {
	URL    string
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("repository URL %q: %s", e.URL, e.Reason)
}

const forms = "use file:///absolute/path, s3://bucket/prefix or minio://host:port/bucket/prefix"

// Parse parses a repository URL.
func Parse(raw string) (Location, error) {
	bad := func(format string, a ...any) (Location, error) {
		return Location{}, &Error{URL: redact(raw), Reason: fmt.Sprintf(format, a...)}
	}
	if strings.TrimSpace(raw) == "" {
		return bad("empty; %s", forms)
	}
	if strings.HasPrefix(raw, "/") {
		return bad("a path, not a URL; write file://%s", raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		if redact(raw) != raw {
			return bad("not a URL, and it seems to hold credentials, which do not belong in it; %s", forms)
		}
		return bad("%v; %s", unwrapURLError(err), forms)
	}
	if u.Scheme == "" {
		return bad("no scheme; %s", forms)
	}
	if u.User != nil {
		return bad("credentials do not belong in the URL; use the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables or the AWS configuration files")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return bad("a fragment (#...) has no meaning here")
	}
	if u.Opaque != "" {
		return bad("write %s:// with two slashes", u.Scheme)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		if redact(raw) != raw {
			return bad("the query does not parse, and it seems to hold credentials, which do not belong in it")
		}
		return bad("query: %v", err)
	}
	var loc Location
	switch u.Scheme {
	case "file":
		loc, err = parseFile(u, q)
	case "s3":
		loc, err = parseS3(u, q)
	case "minio":
		loc, err = parseMinIO(u, q)
	default:
		return bad("unknown scheme %q; %s", u.Scheme, forms)
	}
	if err != nil {
		return bad("%v", err)
	}
	return loc, nil
}

func parseFile(u *url.URL, q url.Values) (Location, error) {
	if u.Host != "" && u.Host != "localhost" {
		return Location{}, fmt.Errorf("host %q: a file repository is local; write file:///absolute/path (three slashes)", u.Host)
	}
	if err := onlyParams(q); err != nil {
		return Location{}, err
	}
	if path.Clean("/"+u.Path) == "/" {
		return Location{}, fmt.Errorf("no directory; write file:///absolute/path")
	}
	if path.Clean(u.Path) != strings.TrimSuffix(u.Path, "/") {
		return Location{}, fmt.Errorf("path %q is not clean (no . or .. or double slashes)", u.Path)
	}
	return Location{Scheme: "file", Dir: path.Clean(u.Path)}, nil
}

func parseS3(u *url.URL, q url.Values) (Location, error) {
	if err := onlyParams(q, "endpoint", "region", "path-style", "checksum", "part-size", "concurrency"); err != nil {
		return Location{}, err
	}
	if err := validBucket(u.Host); err != nil {
		return Location{}, err
	}
	prefix, err := prefixOf(u.Path)
	if err != nil {
		return Location{}, err
	}
	c := s3.Config{Bucket: u.Host, Prefix: prefix, Region: q.Get("region")}
	if ep := q.Get("endpoint"); ep != "" {
		e, err := url.Parse(ep)
		if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
			return Location{}, fmt.Errorf("endpoint %q: want http://host:port or https://host", redact(ep))
		}
		if e.User != nil {
			return Location{}, fmt.Errorf("endpoint: credentials do not belong in the URL; use the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables")
		}
		if e.Path != "" && e.Path != "/" || e.RawQuery != "" {
			return Location{}, fmt.Errorf("endpoint %q: give only scheme, host and port; the bucket and prefix go in the s3:// part", redact(ep))
		}
		c.Endpoint = e.Scheme + "://" + e.Host
		c.PathStyle = true // S3-compatible servers rarely have wildcard DNS
	}
	if v := q.Get("path-style"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Location{}, fmt.Errorf("path-style=%q: want true or false", v)
		}
		c.PathStyle = b
	}
	switch v := s3.Checksum(q.Get("checksum")); v {
	case "", s3.ChecksumWhenSupported, s3.ChecksumWhenRequired:
		c.Checksum = v
	default:
		return Location{}, fmt.Errorf("checksum=%q: want %s or %s", v, s3.ChecksumWhenSupported, s3.ChecksumWhenRequired)
	}
	if c.PartSize, err = sizeParam(q, "part-size"); err != nil {
		return Location{}, err
	}
	n, err := countParam(q, "concurrency")
	if err != nil {
		return Location{}, err
	}
	c.Concurrency = int(n)
	return Location{Scheme: "s3", S3: c}, nil
}

func parseMinIO(u *url.URL, q url.Values) (Location, error) {
	if err := onlyParams(q, "secure", "region", "part-size", "concurrency"); err != nil {
		return Location{}, err
	}
	if u.Host == "" {
		return Location{}, fmt.Errorf("no host; write minio://host:port/bucket/prefix")
	}
	if u.Port() != "" {
		if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
			return Location{}, fmt.Errorf("port %q is not a port number", u.Port())
		}
	}
	bucket, rest, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if bucket == "" {
		return Location{}, fmt.Errorf("no bucket; write minio://host:port/bucket/prefix")
	}
	if err := validBucket(bucket); err != nil {
		return Location{}, err
	}
	prefix, err := prefixOf(rest)
	if err != nil {
		return Location{}, err
	}
	c := minio.Config{Endpoint: u.Host, Secure: true, Bucket: bucket, Prefix: prefix, Region: q.Get("region")}
	if v := q.Get("secure"); v != "" {
		if c.Secure, err = strconv.ParseBool(v); err != nil {
			return Location{}, fmt.Errorf("secure=%q: want true or false", v)
		}
	}
	ps, err := sizeParam(q, "part-size")
	if err != nil {
		return Location{}, err
	}
	c.PartSize = uint64(ps)
	n, err := countParam(q, "concurrency")
	if err != nil {
		return Location{}, err
	}
	c.Concurrency = uint(n)
	return Location{Scheme: "minio", MinIO: c}, nil
}

func onlyParams(q url.Values, known ...string) error {
	for _, k := range slices.Sorted(maps.Keys(q)) {
		v := q[k]
		if !slices.Contains(known, k) {
			if len(known) == 0 {
				return fmt.Errorf("unknown parameter %q; this kind of repository takes none", k)
			}
			return fmt.Errorf("unknown parameter %q; known: %s", k, strings.Join(known, ", "))
		}
		if len(v) > 1 {
			return fmt.Errorf("parameter %q given %d times", k, len(v))
		}
		if v[0] == "" {
			return fmt.Errorf("parameter %q has no value; give one or leave the parameter out", k)
		}
	}
	return nil
}

// validBucket applies S3's bucket naming rules.
func validBucket(b string) error {
	if b == "" {
		return fmt.Errorf("no bucket; write s3://bucket/prefix")
	}
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket %q: a bucket name has 3 to 63 characters", b)
	}
	for i, r := range b {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.'
		if !ok {
			return fmt.Errorf("bucket %q: a bucket name has only lowercase letters, digits, dots and hyphens", b)
		}
		if (i == 0 || i == len(b)-1) && (r == '-' || r == '.') {
			return fmt.Errorf("bucket %q: a bucket name starts and ends with a letter or digit", b)
		}
	}
	return nil
}

func prefixOf(p string) (string, error) {
	p = strings.TrimSuffix(strings.TrimPrefix(p, "/"), "/")
	if p == "" {
		return "", nil
	}
	if err := storage.ValidKey(p); err != nil {
		return "", fmt.Errorf("prefix %q: segments must be non-empty, not . or .., and not start with a dot", p)
	}
	return p, nil
}

// sizeParam parses a byte size such as 8388608, 8MiB or 64MB.
func sizeParam(q url.Values, name string) (int64, error) {
	v := q.Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := ParseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %v", name, v, err)
	}
	if n < 5<<20 || n > 5<<30 {
		return 0, fmt.Errorf("%s=%q: S3 parts are 5MiB to 5GiB", name, v)
	}
	return n, nil
}

func countParam(q url.Values, name string) (int64, error) {
	v := q.Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil || n < 1 || n > 64 {
		return 0, fmt.Errorf("%s=%q: want a whole number from 1 to 64", name, v)
	}
	return n, nil
}

// ParseSize parses a byte count with an optional unit: B, kB, MB, GB (powers
// of 1000) or KiB, MiB, GiB (powers of 1024).
func ParseSize(s string) (int64, error) {
	i := len(s)
	for i > 0 && (s[i-1] < '0' || s[i-1] > '9') {
		i--
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want a byte count such as 8MiB")
	}
	mult := map[string]int64{"": 1, "B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
	m, ok := mult[unit]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q; want B, kB, MB, GB, KiB, MiB or GiB", unit)
	}
	if n > (1<<62)/m {
		return 0, fmt.Errorf("too large")
	}
	return n * m, nil
}

// Open opens the store at loc, creating a file repository's directory.
func Open(ctx context.Context, loc Location) (storage.Store, error) {
	switch loc.Scheme {
	case "file":
		return file.New(loc.Dir)
	case "s3":
		return s3.New(ctx, loc.S3)
	case "minio":
		return minio.New(loc.MinIO)
	}
	return nil, fmt.Errorf("location: unknown scheme %q", loc.Scheme)
}

// String is the location as a URL, for logs.
func (l Location) String() string {
	switch l.Scheme {
	case "file":
		return "file://" + l.Dir
	case "s3":
		s := "s3://" + path.Join(l.S3.Bucket, l.S3.Prefix)
		if l.S3.Endpoint != "" {
			s += "?endpoint=" + url.QueryEscape(l.S3.Endpoint)
		}
		return s
	case "minio":
		return "minio://" + l.MinIO.Endpoint + "/" + path.Join(l.MinIO.Bucket, l.MinIO.Prefix)
	}
	return ""
}

// redact hides a password that someone put in a URL, or in the URL of its
// endpoint parameter, escaped or not, so that the error that refuses it
// does not print it.
func redact(raw string) string {
	const hidden = "(URL with credentials, not shown)"
	if _, query, ok := strings.Cut(raw, "?"); ok && credentials(query) {
		return hidden
	}
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		if credentials(raw) {
			return hidden
		}
		return raw
	}
	u.User = url.User("…")
	return u.String()
}

// credentials reports whether s looks like it holds a user and password:
// an @ with a colon before it, either of them percent-encoded or not.
func credentials(s string) bool {
	s = strings.NewReplacer("%40", "@", "%3A", ":", "%3a", ":").Replace(s)
	i := strings.Index(s, "@")
	return i >= 0 && strings.Contains(s[:i], ":")
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
