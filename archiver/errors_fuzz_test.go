package archiver

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// FuzzRedact checks that a password written in a connection string, in
// any of the ways libpq takes one, never shows in the errors walship
// prints when the string does not parse (pgconn's, for the archiver, and
// pgx's, for the slot probe and list): the error must not change when the
// password's letters and digits do.
func FuzzRedact(f *testing.F) {
	f.Add(uint8(0), "host=h", "s3cr3t", "port=abc")
	f.Add(uint8(2), "u", "s3cr3t", "h:notaport/db")
	f.Add(uint8(3), "", "s3cr3t", "sslmode=maybe")
	f.Add(uint8(5), "u", "s3cr3t", "h/db?sslmode=maybe")
	f.Add(uint8(0), "host=h", "s3cr3t", "unterminated='")
	f.Add(uint8(6), "host=h", "s3cr3t", "default_query_exec_mode=nonsense")
	f.Add(uint8(1), "host=h", `back\slash`, "port=99999999")
	f.Fuzz(func(t *testing.T, form uint8, pre, password, post string) {
		if shift(password) == password || readsFiles(pre+post) {
			return
		}
		if form%7 != 2 && form%7 != 3 && form%7 != 5 && !wholeKeywords(pre) {
			return // the password keyword would be read as a value
		}
		build := func(pw string) string {
			switch form % 7 {
			case 0, 6: // unquoted keyword/value
				if strings.ContainsAny(pw, " \t\n\r\v\f'\\") {
					return ""
				}
				return pre + " password=" + pw + " " + post
			case 1: // quoted, with libpq's escapes
				return pre + " password='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(pw) + "' " + post
			case 2: // URL user information
				return "postgres://" + url.UserPassword(pre, pw).String() + "@" + post
			case 3: // URL parameter
				return "postgresql://h/db?password=" + url.QueryEscape(pw) + "&" + post
			case 4: // spaces around the =, which libpq allows
				if strings.ContainsAny(pw, " \t\n\r\v\f'\\") {
					return ""
				}
				return pre + " password = " + pw + " " + post
			}
			// URL user information as someone may type it, unescaped,
			// an @ in the user name included (as Azure's user@server)
			if strings.ContainsAny(pw, "@/?#%") || strings.ContainsAny(pre, "/?#") {
				return ""
			}
			return "postgres://" + pre + ":" + pw + "@" + post
		}
		conn, conn2 := build(password), build(shift(password))
		if conn == "" {
			return
		}
		_ = Redact(errors.New(conn)) // not pgconn's: must not panic
		for _, parse := range []func(string) error{
			func(s string) error { _, err := pgconn.ParseConfig(s); return err },
			func(s string) error { _, err := pgx.ParseConfig(s); return err },
		} {
			err, err2 := parse(conn), parse(conn2)
			if (err == nil) != (err2 == nil) {
				// The password changes how the string reads (an @ in the
				// user name makes pgconn take it for a host): the one
				// that fails must not show it.
				c, pw, e := conn, password, err
				if err == nil {
					c, pw, e = conn2, shift(password), err2
				}
				msg := Redact(e).Error()
				shown, _, _ := strings.Cut(msg[strings.Index(msg, "`")+1:], "`")
				if strings.Contains(shown, pw) && !strings.Contains(strings.Replace(c, pw, "", 1), pw) {
					t.Fatalf("the password %q shows in the error: %s", pw, msg)
				}
				continue
			}
			if err == nil {
				continue
			}
			if got, got2 := Redact(err).Error(), Redact(err2).Error(); got != got2 {
				t.Fatalf("the password shows in the error:\n%s\n%s", got, got2)
			}
		}
	})
}

// wholeKeywords reports whether s reads as keyword/value pairs on its own,
// so that a keyword after it is one.
func wholeKeywords(s string) bool {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") || strings.HasSuffix(strings.TrimRight(s, " \t\n\r\v\f"), "=") {
		return false // a URL, or a keyword whose value is what follows
	}
	_, err := pgconn.ParseConfig(s)
	return err == nil || !strings.Contains(err.Error(), "keyword/value")
}

// readsFiles reports whether a connection string may name a file that
// parsing it reads (a password, service or certificate file), which a fuzz
// input must not: /dev/zero never ends.
func readsFiles(s string) bool {
	s = strings.ToLower(s)
	if u, err := url.QueryUnescape(s); err == nil {
		s += " " + u
	}
	for _, w := range []string{"file", "cert", "key", "service", "/dev", "/proc", "/sys"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// shift changes each letter and digit of s into another of its kind,
// hexadecimal digits into hexadecimal digits, so that what s spells in a
// connection string keeps its shape.
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
