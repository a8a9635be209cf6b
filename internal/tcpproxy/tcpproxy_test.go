package tcpproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// echo starts a line echo server and returns its address.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string, within time.Duration) (string, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(within))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	return got, err
}

func waitOpen(t *testing.T, p *Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Open() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, want %d", p.Open(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestForwardStallResume(t *testing.T) {
	p := Start(t, echo(t))
	c, r := dial(t, p)
	if got, err := roundTrip(t, c, r, "one", time.Second); err != nil || got != "one\n" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}
	p.Stall()
	if got, err := roundTrip(t, c, r, "two", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("stalled: %q, %v; want a timeout", got, err)
	}
	// A new connection is accepted but hears nothing either.
	c2, r2 := dial(t, p)
	if got, err := roundTrip(t, c2, r2, "new", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new connection while stalled: %q, %v; want a timeout", got, err)
	}
	p.Resume()
	// What was sent during the stall arrives, in order.
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "two\n" {
		t.Fatalf("after resume: %q, %v", got, err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(time.Second))
	if got, err := r2.ReadString('\n'); err != nil || got != "new\n" {
		t.Fatalf("new connection after resume: %q, %v", got, err)
	}
	if p.Accepted() != 2 {
		t.Errorf("accepted %d, want 2", p.Accepted())
	}
}

func TestDrop(t *testing.T) {
	p := Start(t, echo(t))
	c, r := dial(t, p)
	if _, err := roundTrip(t, c, r, "x", time.Second); err != nil {
		t.Fatal(err)
	}
	waitOpen(t, p, 1)
	if n := p.Drop(); n != 1 {
		t.Errorf("dropped %d, want 1", n)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := r.ReadByte(); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read after drop: %v, want a connection reset", err)
	}
	waitOpen(t, p, 0)
	// A dropped connection stays dropped; new ones work.
	c2, r2 := dial(t, p)
	if got, err := roundTrip(t, c2, r2, "again", time.Second); err != nil || got != "again\n" {
		t.Fatalf("after drop: %q, %v", got, err)
	}
	// A drop during a stall ends the stalled connection too.
	p.Stall()
	if _, err := io.WriteString(c2, "held\n"); err != nil {
		t.Fatal(err)
	}
	p.Drop()
	p.Resume()
	_ = c2.SetReadDeadline(time.Now().Add(time.Second))
	if got, err := r2.ReadString('\n'); err == nil {
		t.Errorf("a dropped stalled connection delivered %q", got)
	}
}

func TestRefuse(t *testing.T) {
	p := Start(t, echo(t))
	p.Refuse(true)
	if err := tryOnce(p); err == nil || isTimeout(err) {
		t.Fatalf("refused: %v, want the connection reset", err)
	}
	p.Refuse(false)
	c2, r2 := dial(t, p)
	if got, err := roundTrip(t, c2, r2, "y", time.Second); err != nil || got != "y\n" {
		t.Fatalf("after refusing: %q, %v", got, err)
	}
}

// TestTargetDown: with nothing listening at the target, connections are
// reset, as a stopped server's would be refused.
func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := Start(t, addr)
	if err := tryOnce(p); err == nil || isTimeout(err) {
		t.Fatalf("target down: %v, want the connection closed", err)
	}
}

// tryOnce sends a line through p and reads the answer: the dial, the write
// or the read may see a reset.
func tryOnce(p *Proxy) error {
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "x\n"); err != nil {
		return err
	}
	_, err = bufio.NewReader(c).ReadString('\n')
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestFreeze(t *testing.T) {
	p := Start(t, echo(t))
	c, r := dial(t, p)
	if _, err := roundTrip(t, c, r, "x", time.Second); err != nil {
		t.Fatal(err)
	}
	waitOpen(t, p, 1)
	if n := p.Freeze(); n != 1 {
		t.Errorf("froze %d, want 1", n)
	}
	if got, err := roundTrip(t, c, r, "y", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("frozen: %q, %v; want a timeout", got, err)
	}
	// New connections work; the frozen one stays open and silent.
	c2, r2 := dial(t, p)
	if got, err := roundTrip(t, c2, r2, "z", time.Second); err != nil || got != "z\n" {
		t.Fatalf("new connection: %q, %v", got, err)
	}
	if p.Open() != 2 {
		t.Errorf("%d open, want the frozen one and the new one", p.Open())
	}
	// Even a stall and a resume do not thaw it.
	p.Stall()
	p.Resume()
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if got, err := r.ReadString('\n'); !isTimeout(err) {
		t.Errorf("frozen after resume: %q, %v; want a timeout", got, err)
	}
}
