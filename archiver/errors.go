package archiver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ConfigError is a problem that retrying cannot fix: bad credentials, missing
// privileges, server settings. Its message says what to change.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// explainConnectError turns the server's refusals into errors that say what
// to fix. Errors from pgconn never hold the password.
func explainConnectError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "28P01" || pgErr.Code == "28000" && strings.Contains(pgErr.Message, "password"):
			return &ConfigError{fmt.Errorf("connect: %s; check the password (PGPASSWORD, .pgpass or the connection string)", pgErr.Message)}
		case pgErr.Code == "28000":
			return &ConfigError{fmt.Errorf("connect: %s; the server's pg_hba.conf needs a line allowing replication connections for this user and address", pgErr.Message)}
		case pgErr.Code == "42501":
			return &ConfigError{fmt.Errorf("connect: %s; grant it with ALTER ROLE ... REPLICATION", pgErr.Message)}
		case pgErr.Code == "53300" && strings.Contains(pgErr.Message, "(currently 0)"):
			return &ConfigError{fmt.Errorf("connect: %s; the server allows no replication: set wal_level = replica and max_wal_senders > 0, then restart it", pgErr.Message)}
		case pgErr.Code == "53300":
			return fmt.Errorf("connect: %s; all replication connections are in use: raise max_wal_senders on the server or stop another client", pgErr.Message)
		case pgErr.Code == "55000" && strings.Contains(pgErr.Message, "wal_level"):
			return &ConfigError{fmt.Errorf("connect: %s; set wal_level = replica (or logical) on the server and restart it", pgErr.Message)}
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("connect: %w; the server did not complete the connection in time: check the host, the port and the network path (connect_timeout in the connection string sets the limit)", redactErr(err))
	}
	return fmt.Errorf("connect: %w", redactErr(err))
}

// explainServerError adds what to do to errors of replication commands.
func explainServerError(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch {
	case pgErr.Code == "42501":
		return &ConfigError{fmt.Errorf("%s; the role needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)", pgErr.Message)}
	case pgErr.Code == "55000" && strings.Contains(pgErr.Message, "wal_level"):
		return &ConfigError{fmt.Errorf("%s; set wal_level = replica (or logical) on the server and restart it", pgErr.Message)}
	case pgErr.Code == "53400" || strings.Contains(pgErr.Message, "max_replication_slots"):
		return &ConfigError{fmt.Errorf("%s; raise max_replication_slots on the server or drop an unused slot", pgErr.Message)}
	case strings.Contains(pgErr.Message, "has already been removed") || strings.Contains(pgErr.Message, "can no longer"):
		return fmt.Errorf("%w: %w: %s; the primary removed WAL that was never archived (the slot was invalidated, e.g. by max_slot_wal_keep_size, or dropped and made again): "+
			"the repository has a gap from here, and no backup taken before it can be recovered past it. Take a new base backup; to archive again from where the "+
			"primary's WAL now begins, drop an invalidated slot (SELECT pg_drop_replication_slot('<slot>')) and run walship archive with --accept-gap", errFatal, errWALRemoved, pgErr.Message)
	case pgErr.Code == "55006":
		return fmt.Errorf("%w: %s; another client (or a dead connection the server has not noticed yet, until wal_sender_timeout) is using the slot", errSlotActive, pgErr.Message)
	}
	return err
}

// errSlotActive marks a slot in use by another connection.
var errSlotActive = errors.New("slot in use")

// errWALRemoved marks a start position whose WAL the primary no longer has.
var errWALRemoved = errors.New("WAL removed before it was archived")

// redactErr removes a password that pgconn may quote from a connection
// string it could not parse.
func redactErr(err error) error {
	msg := err.Error()
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) && !strings.HasPrefix(pce.ConnString, "postgres://") && !strings.HasPrefix(pce.ConnString, "postgresql://") {
		// pgconn masks password=value but not password = value, nor the
		// part of a quoted one after an escaped quote: show the string as
		// walship masks it instead.
		shown := pgconn.NewParseConfigError(pce.ConnString, "", nil).Error()
		msg = strings.Replace(msg, shown, "cannot parse `"+redactKeywords(pce.ConnString)+"`: ", 1)
	} else if errors.As(err, &pce) && strings.Count(pce.ConnString, "@") > 1 {
		// With an @ in the user name or password (as Azure's user@server),
		// pgconn may take the password for a host and show it, or quote it
		// in its reason: mask everything before the last @.
		shown := pgconn.NewParseConfigError(pce.ConnString, "", nil).Error()
		scheme, rest, _ := strings.Cut(pce.ConnString, "://")
		msg = strings.Replace(msg, shown, "cannot parse `"+scheme+"://xxxxx"+rest[strings.LastIndex(rest, "@"):]+"`: ", 1)
		if inner := errors.Unwrap(pce); inner != nil {
			msg = strings.Replace(msg, "("+inner.Error()+")", "(an @ in a user name or password must be written %40)", 1)
		}
	}
	for _, key := range []string{"password=", "password:"} {
		if i := strings.Index(msg, key); i >= 0 {
			end := strings.IndexAny(msg[i+len(key):], " '\"&@")
			if end < 0 {
				end = len(msg) - i - len(key)
			}
			msg = msg[:i+len(key)] + "xxxxx" + msg[i+len(key)+end:]
		}
	}
	return errors.New(msg)
}

// Redact returns err with any password a connection string put in its
// message masked, for errors of connections walship makes outside the
// archiver.
func Redact(err error) error {
	if err == nil {
		return nil
	}
	return redactErr(err)
}

// redactKeywords masks the values of password keywords in a libpq
// keyword/value connection string, reading it as pgconn does; from where it
// stops making sense (no =, an unterminated quote) it masks the rest.
// After a stray = ("= password = x", "= password=x"), a value that holds
// the word password, and the value after it, are masked too.
func redactKeywords(conn string) string {
	const spaces = " \t\n\r\v\f"
	var b strings.Builder
	skipSpaces := func(s string) string {
		t := strings.TrimLeft(s, spaces)
		b.WriteString(s[:len(s)-len(t)])
		return t
	}
	prev := "" // the previous value
	for s := skipSpaces(conn); s != ""; s = skipSpaces(s) {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			b.WriteString("xxxxx")
			break
		}
		key := strings.ToLower(strings.Trim(s[:eq], spaces))
		b.WriteString(s[:eq+1])
		s = skipSpaces(s[eq+1:])
		end := 0
		if strings.HasPrefix(s, "'") {
			for end = 1; end < len(s) && s[end] != '\''; end++ {
				if s[end] == '\\' {
					end++
				}
			}
			if end >= len(s) {
				b.WriteString("xxxxx")
				break
			}
			end++ // the closing quote
		} else {
			for ; end < len(s) && !strings.ContainsRune(spaces, rune(s[end])); end++ {
				if s[end] == '\\' {
					end++
				}
			}
			end = min(end, len(s))
		}
		value := strings.ToLower(s[:end])
		if strings.Contains(key, "password") || strings.Contains(value, "password") || key == "" && strings.Contains(prev, "password") {
			b.WriteString("xxxxx")
		} else {
			b.WriteString(s[:end])
		}
		prev = value
		s = s[end:]
	}
	return b.String()
}
