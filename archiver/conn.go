package archiver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walship/walship/internal/wal"
)

// Server is what the archiver learns about the primary when it connects.
type Server struct {
	SystemID    string
	TLI         wal.TimeLineID
	FlushLSN    wal.LSN // IDENTIFY_SYSTEM's xlogpos: flushed WAL at connect time
	SegmentSize uint64
	VersionNum  int // server_version_num, e.g. 150018
}

// defaultConnectTimeout bounds a connection attempt whose connection string
// sets no connect_timeout.
var defaultConnectTimeout = 30 * time.Second

// connect opens a physical replication connection. The connection string is
// a libpq keyword/value string or URL; PG* environment variables, .pgpass and
// sslmode work as in libpq.
func connect(ctx context.Context, connString, appName string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", redactErr(err))
	}
	cfg.RuntimeParams["replication"] = "true"
	if _, set := cfg.RuntimeParams["application_name"]; !set {
		cfg.RuntimeParams["application_name"] = appName
	}
	// connect_timeout bounds the whole connection (TCP, TLS, start-up and
	// authentication), not only the dial; libpq waits forever without it.
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	// Keepalives find a dead primary (or a dead path to it) within about a
	// minute instead of the kernel's two hours.
	d := &net.Dialer{KeepAlive: 15 * time.Second, Timeout: cfg.ConnectTimeout}
	cfg.DialFunc = d.DialContext
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, explainConnectError(err)
	}
	return conn, nil
}

// identify runs IDENTIFY_SYSTEM and reads the settings the archive depends on.
func identify(ctx context.Context, conn *pgconn.PgConn) (Server, error) {
	id, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return Server{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", explainServerError(err))
	}
	s := Server{SystemID: id.SystemID, TLI: wal.TimeLineID(id.Timeline), FlushLSN: wal.LSN(id.XLogPos)}
	size, err := show(ctx, conn, "wal_segment_size")
	if err != nil {
		return Server{}, err
	}
	if s.SegmentSize, err = parseBytes(size); err != nil || !wal.ValidSegmentSize(s.SegmentSize) {
		return Server{}, fmt.Errorf("server reports wal_segment_size %q, which walship does not understand", size)
	}
	v, err := show(ctx, conn, "server_version_num")
	if err != nil {
		return Server{}, err
	}
	if s.VersionNum, err = strconv.Atoi(v); err != nil || s.VersionNum < 140000 {
		return Server{}, fmt.Errorf("server_version_num %q: walship supports PostgreSQL 14 and later", v)
	}
	return s, nil
}

// show runs SHOW name on a replication connection.
func show(ctx context.Context, conn *pgconn.PgConn, name string) (string, error) {
	res, err := conn.Exec(ctx, "SHOW "+name).ReadAll()
	if err != nil {
		return "", fmt.Errorf("SHOW %s: %w", name, explainServerError(err))
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return "", fmt.Errorf("SHOW %s: unexpected result", name)
	}
	return string(res[0].Rows[0][0]), nil
}

// parseBytes parses PostgreSQL's memory units ("16MB", "1GB", "8192").
func parseBytes(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseUint(n, 10, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseUint(s, 10, 64)
}

var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidSlotName reports whether name is a replication slot name PostgreSQL
// accepts.
func ValidSlotName(name string) error {
	if !slotName.MatchString(name) {
		return fmt.Errorf("slot name %q: use 1 to 63 lower-case letters, digits and underscores", name)
	}
	return nil
}

// ensureSlot creates the physical slot with RESERVE_WAL, so that the server
// keeps WAL from the moment the slot exists, or finds that it exists. It
// reports whether it created the slot.
func ensureSlot(ctx context.Context, conn *pgconn.PgConn, name string) (bool, error) {
	// The keyword form is accepted by PostgreSQL 14 through 18 alike.
	_, err := conn.Exec(ctx, fmt.Sprintf("CREATE_REPLICATION_SLOT %s PHYSICAL RESERVE_WAL", name)).ReadAll()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // duplicate_object
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("create replication slot %s: %w", name, explainServerError(err))
	}
	return true, nil
}

// slotState is what READ_REPLICATION_SLOT tells (PostgreSQL 15 and later).
type slotState struct {
	Exists     bool
	RestartLSN wal.LSN
	RestartTLI wal.TimeLineID
}

// readSlot reads the slot's restart position; ok is false on PostgreSQL 14,
// which lacks READ_REPLICATION_SLOT.
func readSlot(ctx context.Context, conn *pgconn.PgConn, name string, versionNum int) (slotState, bool, error) {
	if versionNum < 150000 {
		return slotState{}, false, nil
	}
	res, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+name).ReadAll()
	if err != nil {
		return slotState{}, false, fmt.Errorf("READ_REPLICATION_SLOT %s: %w", name, explainServerError(err))
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 3 {
		return slotState{}, false, fmt.Errorf("READ_REPLICATION_SLOT %s: unexpected result", name)
	}
	row := res[0].Rows[0]
	if row[0] == nil {
		return slotState{}, true, nil
	}
	st := slotState{Exists: true}
	if row[1] != nil {
		lsn, err := wal.ParseLSN(string(row[1]))
		if err != nil {
			return slotState{}, false, err
		}
		st.RestartLSN = lsn
	}
	if row[2] != nil {
		tli, err := strconv.ParseUint(string(row[2]), 10, 32)
		if err != nil {
			return slotState{}, false, fmt.Errorf("READ_REPLICATION_SLOT: restart_tli %q", row[2])
		}
		st.RestartTLI = wal.TimeLineID(tli)
	}
	return st, true, nil
}

// pgEpoch is PostgreSQL's timestamp epoch.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// sendStatus sends a standby status update with write = received, flush =
// durable and apply = 0. pglogrepl replaces a zero flush or apply with the
// write position, which would tell the primary that WAL not yet in the
// repository is safe, so the message is encoded here.
func sendStatus(conn *pgconn.PgConn, received, durable wal.LSN, replyRequested bool) error {
	var b [34]byte
	b[0] = 'r'
	binary.BigEndian.PutUint64(b[1:], uint64(received))
	binary.BigEndian.PutUint64(b[9:], uint64(durable))
	binary.BigEndian.PutUint64(b[17:], 0) // apply: walship applies nothing
	binary.BigEndian.PutUint64(b[25:], uint64(time.Since(pgEpoch).Microseconds()))
	if replyRequested {
		b[33] = 1
	}
	msg, err := (&pgproto3.CopyData{Data: b[:]}).Encode(nil)
	if err != nil {
		return err
	}
	return conn.Frontend().SendUnbufferedEncodedCopyData(msg)
}

// CreateSlot makes sure the physical replication slot name exists on the
// server connString names, created with RESERVE_WAL so that it holds WAL
// from now on, as a standby's primary_slot_name needs. It reports whether it
// created the slot.
func CreateSlot(ctx context.Context, connString, name string) (bool, error) {
	if err := ValidSlotName(name); err != nil {
		return false, err
	}
	conn, err := connect(ctx, connString, "walship")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return ensureSlot(ctx, conn, name)
}

// Identify connects to the primary connString names over a replication
// connection, as the archiver does, and reports what IDENTIFY_SYSTEM and
// the server's settings say. Its errors say what to fix: the password,
// pg_hba.conf's replication line, the REPLICATION attribute, wal_level and
// max_wal_senders.
func Identify(ctx context.Context, connString string) (Server, error) {
	conn, err := connect(ctx, connString, "walship_check")
	if err != nil {
		return Server{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return identify(ctx, conn)
}
