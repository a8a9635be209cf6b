package restore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/walship/walship/internal/durable"
	"github.com/walship/walship/internal/wal"
)

// Recovery is how a restored data directory recovers when it starts.
type Recovery struct {
	// RestoreCommand is the complete restore_command (see RestoreCommand);
	// Restore sets it.
	RestoreCommand string
	Target         Target
	Timeline       wal.TimeLineID // 0 writes 'latest'
	// Action is recovery_target_action: promote, pause or shutdown.
	Action string
	// Standby writes standby.signal, primary_conninfo and
	// primary_slot_name instead of a recovery target.
	Standby         bool
	PrimaryConnInfo string
	PrimarySlot     string
	// KeepArchiving keeps the source's archive settings; by default the
	// restored node does not archive, so that it never writes into the
	// repository it came from.
	KeepArchiving bool
	// Comment heads the settings block, e.g. which backup was restored.
	Comment string
}

// managed are the settings WriteRecovery owns: earlier lines setting them in
// postgresql.auto.conf (inherited from the source) are commented out, so
// that no stale target or primary remains.
var managed = []string{
	"restore_command", "recovery_target", "recovery_target_time", "recovery_target_lsn",
	"recovery_target_xid", "recovery_target_name", "recovery_target_inclusive",
	"recovery_target_timeline", "recovery_target_action", "primary_conninfo",
	"primary_slot_name", "archive_mode", "archive_command", "archive_library",
}

// WriteRecovery prepares the extracted backup in dir to recover as r says:
// inherited standby.signal and recovery.signal removed, pg_wal empty with
// archive_status, the settings appended to postgresql.auto.conf, and the
// signal file written last.
func WriteRecovery(dir string, r Recovery) error {
	if r.RestoreCommand == "" {
		return errors.New("recovery: no restore_command")
	}
	for _, name := range []string{"standby.signal", "recovery.signal"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "recovery.conf")); err == nil {
		return errors.New("the backup holds a recovery.conf, which PostgreSQL 12 and later refuse to start with; remove it")
	}
	if err := emptyWALDir(dir); err != nil {
		return err
	}
	settings, err := r.settings()
	if err != nil {
		return err
	}
	auto := filepath.Join(dir, "postgresql.auto.conf")
	old, err := os.ReadFile(auto)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	owned := managed
	if r.KeepArchiving {
		owned = slices.DeleteFunc(slices.Clone(managed), func(k string) bool { return strings.HasPrefix(k, "archive_") })
	}
	var b bytes.Buffer
	b.Write(commentOut(old, owned))
	if b.Len() > 0 && !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "\n# walship restore, %s: %s\n", time.Now().UTC().Format(time.RFC3339), r.Comment)
	for _, kv := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", kv[0], confEscape(kv[1]))
	}
	if err := writeFileSync(auto, b.Bytes(), 0o600); err != nil {
		return err
	}
	signal := "recovery.signal"
	if r.Standby {
		signal = "standby.signal"
	}
	if err := writeFileSync(filepath.Join(dir, signal), nil, 0o600); err != nil {
		return err
	}
	return durable.SyncDir(dir)
}

func (r Recovery) settings() ([][2]string, error) {
	s := [][2]string{{"restore_command", r.RestoreCommand}}
	tli := "latest"
	if r.Timeline != 0 {
		tli = strconv.FormatUint(uint64(r.Timeline), 10)
	}
	s = append(s, [2]string{"recovery_target_timeline", tli})
	if r.Standby {
		if r.PrimaryConnInfo != "" {
			s = append(s, [2]string{"primary_conninfo", r.PrimaryConnInfo})
		}
		if r.PrimarySlot != "" {
			s = append(s, [2]string{"primary_slot_name", r.PrimarySlot})
		}
	} else {
		// Every target setting, so that one in postgresql.conf cannot
		// combine with ours into "multiple recovery targets".
		targets := map[string]string{"recovery_target": "", "recovery_target_time": "", "recovery_target_lsn": "", "recovery_target_xid": "", "recovery_target_name": ""}
		t := r.Target
		switch t.Kind {
		case Latest:
		case Immediate:
			targets["recovery_target"] = "immediate"
		case ToTime:
			targets["recovery_target_time"] = t.Time.UTC().Format("2006-01-02 15:04:05.999999-07:00")
		case ToLSN:
			targets["recovery_target_lsn"] = t.LSN.String()
		case ToXID:
			targets["recovery_target_xid"] = strconv.FormatUint(t.XID, 10)
		case ToName:
			targets["recovery_target_name"] = t.Name
		default:
			return nil, fmt.Errorf("recovery: unknown target kind %d", t.Kind)
		}
		// The empty ones first: PostgreSQL applies settings in order and
		// refuses a second target even when it is being cleared.
		var chosen [2]string
		for _, k := range []string{"recovery_target", "recovery_target_time", "recovery_target_lsn", "recovery_target_xid", "recovery_target_name"} {
			if targets[k] == "" {
				s = append(s, [2]string{k, ""})
			} else {
				chosen = [2]string{k, targets[k]}
			}
		}
		if chosen[0] != "" {
			s = append(s, chosen)
		}
		inclusive := "on"
		if t.Exclusive {
			inclusive = "off"
		}
		s = append(s, [2]string{"recovery_target_inclusive", inclusive})
		action := r.Action
		if action == "" {
			action = "promote"
		}
		switch action {
		case "promote", "pause", "shutdown":
		default:
			return nil, fmt.Errorf("recovery target action %q: want promote, pause or shutdown", action)
		}
		s = append(s, [2]string{"recovery_target_action", action})
	}
	if !r.KeepArchiving {
		s = append(s, [2]string{"archive_mode", "off"})
	}
	return s, nil
}

// commentOut comments out the lines of a postgresql.auto.conf that set a
// managed setting.
func commentOut(conf []byte, managed []string) []byte {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(conf))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		name, _, ok := strings.Cut(strings.TrimSpace(line), "=")
		name = strings.ToLower(strings.TrimSpace(name))
		if ok && !strings.HasPrefix(name, "#") && slices.Contains(managed, name) {
			line = "# replaced by walship restore: " + line
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

// confEscape escapes a value for a single-quoted postgresql.conf string.
func confEscape(v string) string {
	return strings.NewReplacer(`\`, `\\`, `'`, `''`, "\n", `\n`).Replace(v)
}

// RestoreCommand is a restore_command that runs walship's wal-fetch by
// absolute path with the repository URL, the age identity file (if any) and
// fetchFlags spelled out, so that it needs nothing from the server's
// environment but storage credentials.
//
// A segment already in the default prefetch spool is taken by the shell with
// a rename, without starting walship: the spool holds only complete,
// verified segments, written under their names atomically. The shell reads
// the boot's id (a builtin read, no process) to find this boot's spool.
func RestoreCommand(walship, repoURL, identityFile string, fetchFlags ...string) string {
	spooled := shellQuote(spoolRel(repoURL)+"/") + `"$walship_boot"/"%f"`
	cmd := "walship_boot=; read walship_boot 2>/dev/null <" + bootIDFile + "; mv -f " + spooled + ` "%p" 2>/dev/null || ` + shellQuote(walship) + " --repo " + shellQuote(repoURL) + " wal-fetch"
	if identityFile != "" {
		cmd += " --age-identity-file " + shellQuote(identityFile)
	}
	for _, f := range fetchFlags {
		cmd += " " + shellQuote(f)
	}
	return cmd + ` "%f" "%p"`
}

// shellQuote quotes s for the shell that runs restore_command, with %
// doubled because PostgreSQL expands %f, %p and %r in it.
func shellQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// emptyWALDir makes sure dir/pg_wal exists with archive_status and holds no
// WAL, as recovery expects.
func emptyWALDir(dir string) error {
	walDir := filepath.Join(dir, "pg_wal")
	entries, err := os.ReadDir(walDir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(walDir, 0o700); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() { // archive_status, and summaries from 17 on
			continue
		}
		return fmt.Errorf("the backup's pg_wal holds %s; a restored pg_wal must hold no WAL", e.Name())
	}
	if err := os.Mkdir(filepath.Join(walDir, "archive_status"), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

func writeFileSync(path string, data []byte, perm fs.FileMode) error {
	return writeAtomic(path, func(f *os.File) error {
		if err := f.Chmod(perm); err != nil {
			return err
		}
		_, err := f.Write(data)
		return err
	})
}
