package tcpproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards the connections it accepts to its target.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    map[*pair]struct{}
	stalled  chan struct{} // non-nil while stalled; Resume closes it
	refuse   bool
	accepted int
	closed   bool
}

// pair is one client connection and its connection to the target.
type pair struct {
	client, server net.Conn
	once           sync.Once
	dead           chan struct{} // closed once both are closed
	frozen         atomic.Bool   // moves no more bytes, ever
}

// close closes both connections, with a TCP RST if reset.
func (c *pair) close(reset bool) {
	c.once.Do(func() {
		if reset {
			for _, conn := range []net.Conn{c.client, c.server} {
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
			}
		}
		_ = c.client.Close()
		_ = c.server.Close()
		close(c.dead)
	})
}

// New starts a proxy on a free loopback port that forwards to target
// (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tcpproxy: %w", err)
	}
	p := &Proxy{target: target, ln: ln, conns: map[*pair]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Start is New for a test: it fails the test on error and closes the proxy
// when the test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's port, at 127.0.0.1.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Open returns how many connections are open.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted returns how many connections the proxy accepted.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Drop resets every open connection, on both sides, and returns how many
// there were.
func (p *Proxy) Drop() int {
	p.mu.Lock()
	conns := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close(true)
	}
	return len(conns)
}

// Stall stops moving bytes on every connection, open or new, until Resume:
// nothing is lost or closed, and neither side learns of it, as in a
// network partition. New connections are accepted but hear nothing.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled == nil {
		p.stalled = make(chan struct{})
	}
}

// Resume moves bytes again after Stall, in the order they came.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
}

// Freeze stops moving bytes on every open connection for good, without
// closing it: neither side learns, as when the path between them dies
// without a reset. New connections work. It returns how many it froze.
func (p *Proxy) Freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.frozen.Store(true)
	}
	return len(p.conns)
}

// Refuse, while on, resets new connections as soon as they are accepted,
// as a server that is down would refuse them.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = on
}

// Close stops accepting, resets every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.Drop()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		p.mu.Lock()
		p.accepted++
		refuse, closed := p.refuse, p.closed
		p.mu.Unlock()
		if refuse || closed {
			if tc, ok := client.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = client.Close()
			continue
		}
		server, err := net.DialTimeout("tcp", p.target, 10*time.Second)
		if err != nil {
			// The target is down: the client's connection is refused too.
			if tc, ok := client.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = client.Close()
			continue
		}
		c := &pair{client: client, server: server, dead: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.close(true)
			return
		}
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.pump(c, server, client) })
		p.wg.Go(func() { p.pump(c, client, server) })
		p.wg.Go(func() {
			<-c.dead
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		})
	}
}

// pump copies src to dst until either fails or ends, holding each chunk
// (and the end) while the proxy is stalled, then closes the pair.
func (p *Proxy) pump(c *pair, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !p.flowing(c) {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				c.close(true)
				return
			}
		}
		if err != nil {
			// An end passes on as an end, a failure as a reset.
			c.close(!errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed))
			return
		}
	}
}

// flowing waits while the proxy is stalled or c is frozen; false if c was
// closed meanwhile.
func (p *Proxy) flowing(c *pair) bool {
	for {
		if c.frozen.Load() {
			<-c.dead
			return false
		}
		p.mu.Lock()
		ch := p.stalled
		p.mu.Unlock()
		if ch == nil {
			select {
			case <-c.dead:
				return false
			default:
				return true
			}
		}
		select {
		case <-ch:
		case <-c.dead:
			return false
		}
	}
}

// String describes the proxy.
func (p *Proxy) String() string {
	return "tcpproxy " + p.Addr() + " → " + p.target + " (" + strconv.Itoa(p.Open()) + " open)"
}
