package storage

import (
	"errors"
	"strings"
	"testing"
)

func TestValidKey(t *testing.T) {
	for _, k := range []string{"a", "wal/00000001/000000010000000000000001", "backups/20261128T101500Z/base.tar.zst", "a.b/c-d_e", "x/y.partial/0001"} {
		if err := ValidKey(k); err != nil {
			t.Errorf("ValidKey(%q) = %v, want nil", k, err)
		}
	}
	for k, want := range map[string]string{
		"":                               "empty",
		"/a":                             "empty path segment",
		"a/":                             "empty path segment",
		"a//b":                           "empty path segment",
		".":                              ". or ..",
		"a/../b":                         ". or ..",
		".tmp":                           "starting with a dot",
		"a/.b":                           "starting with a dot",
		"a\x00b":                         "control character",
		"a\nb":                           "control character",
		"a\x7fb":                         "control character",
		strings.Repeat("x", 300) + "/..": ". or ..",
	} {
		err := ValidKey(k)
		var ke *KeyError
		if !errors.As(err, &ke) && k != "" {
			t.Errorf("ValidKey(%q) = %v, want a *KeyError", k, err)
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidKey(%q) = %v, want it to say %q", k, err, want)
		}
		if len(err.Error()) > 300 {
			t.Errorf("ValidKey error is %d bytes long; keys should be shortened", len(err.Error()))
		}
	}
}
