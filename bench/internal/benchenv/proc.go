package benchenv

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Process accounting from /proc: the tree of a tool's processes, their
// memory and CPU.

// clkTck is USER_HZ, the unit of CPU times in /proc/PID/stat.
const clkTck = 100

// children lists the child processes of pid, over all its threads.
func children(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var kids []int
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if k, err := strconv.Atoi(f); err == nil {
				kids = append(kids, k)
			}
		}
	}
	return kids
}

// procValue returns the value of the first "key: value" line of a /proc
// file, or "".
func procValue(path, key string) string {
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// kB parses a /proc size such as "1234 kB" into bytes.
func kB(v string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
	return n * 1024
}

// treeRSS sums the resident sets of pid and its descendants, leaving out
// runuser, which only wraps pgBackRest and barman.
func treeRSS(pid int) int64 {
	status := fmt.Sprintf("/proc/%d/status", pid)
	var rss int64
	if procValue(status, "Name") != "runuser" {
		rss = kB(procValue(status, "VmRSS"))
	}
	for _, k := range children(pid) {
		rss += treeRSS(k)
	}
	return rss
}

// fileRSS is the file-backed part of pid's resident set: its binary's and
// libraries' pages, not its heap.
func fileRSS(pid int) int64 {
	return kB(procValue(fmt.Sprintf("/proc/%d/status", pid), "RssFile"))
}

func childNamed(pid int, name string) int {
	for _, k := range children(pid) {
		if procValue(fmt.Sprintf("/proc/%d/status", k), "Name") == name {
			return k
		}
	}
	return 0
}

// procCPU is the user+sys seconds of pid, plus those of the children it
// has reaped when reaped is set.
func procCPU(pid int, reaped bool) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which may hold spaces: state is
	// field 3, utime 14, stime 15, cutime 16, cstime 17.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 15 {
		return 0
	}
	field := func(n int) float64 { v, _ := strconv.ParseFloat(f[n-3], 64); return v }
	ticks := field(14) + field(15)
	if reaped {
		ticks += field(16) + field(17)
	}
	return ticks / clkTck
}

// PgCPU is the CPU seconds of every postgres process so far: the
// postmaster's, its live children's and those of the children it reaped
// (a walsender that has exited).
func PgCPU(postmaster int) float64 {
	s := procCPU(postmaster, true)
	for _, k := range children(postmaster) {
		s += procCPU(k, false)
	}
	return s
}
