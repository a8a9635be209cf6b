package restore

import "testing"

func TestDistinctDirs(t *testing.T) {
	for _, c := range []struct {
		dirs []string
		ok   bool
	}{
		{[]string{"/data", "/ts1", "/ts2"}, true},
		{[]string{"/data", "/data2"}, true},
		{[]string{"/data", "/ts", "/ts/"}, false},
		{[]string{"/data", "/data/ts"}, false},
		{[]string{"/srv/ts/a", "/data", "/srv/ts"}, false},
	} {
		if err := distinctDirs(c.dirs); (err == nil) != c.ok {
			t.Errorf("distinctDirs(%q) = %v", c.dirs, err)
		}
	}
}
