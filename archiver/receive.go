package archiver

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walship/walship/internal/wal"
)

// message is what the receiver hands the session: one of its fields is set.
type message struct {
	xlog      *xlogData
	keepalive *keepalive
	copyDone  bool // the server ended the timeline
	err       error
}

type xlogData struct {
	start     wal.LSN
	serverEnd wal.LSN
	data      []byte // a copy: pgconn reuses its buffers
}

type keepalive struct {
	serverEnd      wal.LSN
	replyRequested bool
}

// maxXLogData bounds one XLogData payload; the server sends at most 128 kB
// (XLOG_BLCKSZ*16), 1 MiB allows for larger block sizes.
const maxXLogData = 1 << 20

// receive reads the replication stream until it ends or fails, passing each
// message on. It owns the reading side of conn; the session writes status
// updates concurrently, which pgconn's frontend allows. It returns after
// CopyDone, an error, or ctx being done.
func receive(ctx context.Context, conn *pgconn.PgConn, out chan<- message) {
	send := func(m message) bool {
		select {
		case out <- m:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		raw, err := conn.ReceiveMessage(ctx)
		if err != nil {
			send(message{err: fmt.Errorf("receive: %w", explainServerError(err))})
			return
		}
		switch m := raw.(type) {
		case *pgproto3.CopyData:
			msg, err := parseCopyData(m.Data)
			if err != nil {
				send(message{err: err})
				return
			}
			if msg == nil {
				continue
			}
			if !send(*msg) {
				return
			}
		case *pgproto3.CopyDone:
			send(message{copyDone: true})
			return
		case *pgproto3.ErrorResponse:
			send(message{err: fmt.Errorf("server: %w", explainServerError(pgconn.ErrorResponseToPgError(m)))})
			return
		case *pgproto3.CommandComplete:
			send(message{err: fmt.Errorf("the server ended replication (shutting down?)")})
			return
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			send(message{err: fmt.Errorf("unexpected %T in the replication stream", raw)})
			return
		}
	}
}

func parseCopyData(b []byte) (*message, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("empty CopyData in the replication stream")
	}
	switch b[0] {
	case 'w':
		if len(b) < 25 {
			return nil, fmt.Errorf("XLogData of %d bytes is shorter than its header", len(b))
		}
		payload := b[25:]
		if len(payload) > maxXLogData {
			return nil, fmt.Errorf("XLogData of %d bytes is larger than any server sends", len(payload))
		}
		return &message{xlog: &xlogData{
			start:     wal.LSN(binary.BigEndian.Uint64(b[1:])),
			serverEnd: wal.LSN(binary.BigEndian.Uint64(b[9:])),
			data:      append(recvBuf(), payload...),
		}}, nil
	case 'k':
		if len(b) < 18 {
			return nil, fmt.Errorf("keepalive of %d bytes is shorter than its 18", len(b))
		}
		return &message{keepalive: &keepalive{
			serverEnd:      wal.LSN(binary.BigEndian.Uint64(b[1:])),
			replyRequested: b[17] != 0,
		}}, nil
	}
	return nil, nil // unknown sub-messages are ignored, as walreceiver does
}

// Message buffers are pooled: at catch-up speed the server sends thousands
// of 128 kB messages a second, and fresh copies would be garbage the moment
// they are in a segment buffer.
var recvBufs = sync.Pool{New: func() any { b := make([]byte, 0, 128<<10); return &b }}

func recvBuf() []byte { return (*recvBufs.Get().(*[]byte))[:0] }

// releaseRecvBuf returns a message's buffer once its bytes are copied.
func releaseRecvBuf(b []byte) {
	if cap(b) == 128<<10 {
		b = b[:0]
		recvBufs.Put(&b)
	}
}
