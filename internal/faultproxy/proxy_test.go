package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// upstream is a tiny object server: PUT stores, GET serves.
type upstream struct {
	mu      sync.Mutex
	objects map[string][]byte
	seen    atomic.Int32
	short   atomic.Int32 // PUT bodies that ended early
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.seen.Add(1)
	switch r.Method {
	case http.MethodPut:
		b, err := io.ReadAll(r.Body)
		if err != nil || int64(len(b)) != r.ContentLength {
			u.short.Add(1)
			return
		}
		u.mu.Lock()
		u.objects[r.URL.Path] = b
		u.mu.Unlock()
	case http.MethodGet:
		u.mu.Lock()
		b, ok := u.objects[r.URL.Path]
		u.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	}
}

func (u *upstream) has(path string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.objects[path]
	return ok
}

func setup(t *testing.T) (*Proxy, *upstream, *http.Client) {
	u := &upstream{objects: map[string][]byte{}}
	srv := httptest.NewServer(u)
	t.Cleanup(srv.Close)
	p := Start(t, srv.URL)
	// No retries of its own: each request shows its fault.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	return p, u, client
}

func do(t *testing.T, c *http.Client, method, url string, body []byte) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func TestFaults(t *testing.T) {
	p, u, c := setup(t)
	obj := bytes.Repeat([]byte("0123456789"), 1000)
	url := p.URL() + "/bucket/pg/wal/a"
	if resp, _, err := do(t, c, http.MethodPut, url, obj); err != nil || resp.StatusCode != 200 {
		t.Fatalf("put through the proxy: %v %v", resp, err)
	}

	t.Run("reset", func(t *testing.T) {
		p.Set(Rule{Op: Get, Fault: Reset})
		before := u.seen.Load()
		if _, _, err := do(t, c, http.MethodGet, url, nil); err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("get: %v, want a connection reset", err)
		}
		if u.seen.Load() != before {
			t.Error("the server saw a request reset before it")
		}
	})
	t.Run("reset after", func(t *testing.T) {
		p.Set(Rule{Op: Put, Fault: ResetAfter})
		if _, _, err := do(t, c, http.MethodPut, p.URL()+"/bucket/pg/wal/b", []byte("b")); err == nil {
			t.Error("put: no error, want a reset")
		}
		if !u.has("/bucket/pg/wal/b") {
			t.Error("the server did not store the object whose answer was reset")
		}
	})
	for _, tc := range []struct {
		fault  Fault
		status int
		code   string
	}{{InternalError, 500, "<Code>InternalError</Code>"}, {SlowDown, 503, "<Code>SlowDown</Code>"}} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			p.Set(Rule{Op: Get, Key: "wal/", Fault: tc.fault})
			before := u.seen.Load()
			resp, body, err := do(t, c, http.MethodGet, url, nil)
			if err != nil || resp.StatusCode != tc.status || !bytes.Contains(body, []byte(tc.code)) || resp.Header.Get("Content-Type") != "application/xml" {
				t.Errorf("get: %v %v %s, want %d with %s", resp, err, body, tc.status, tc.code)
			}
			if u.seen.Load() != before {
				t.Error("the server saw the request")
			}
		})
	}
	t.Run("delay", func(t *testing.T) {
		p.Set(Rule{Op: Get, Fault: Delay, Delay: 200 * time.Millisecond})
		start := time.Now()
		if _, body, err := do(t, c, http.MethodGet, url, nil); err != nil || !bytes.Equal(body, obj) {
			t.Errorf("get: %v", err)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("took %s, want at least the delay", d)
		}
	})
	t.Run("truncate", func(t *testing.T) {
		p.Set(Rule{Op: Get, Fault: Truncate})
		resp, body, err := do(t, c, http.MethodGet, url, nil)
		if resp == nil || resp.StatusCode != 200 || resp.ContentLength != int64(len(obj)) {
			t.Fatalf("get: %v %v, want 200 with the full Content-Length", resp, err)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) || len(body) != len(obj)/2 || !bytes.Equal(body, obj[:len(body)]) {
			t.Errorf("body: %d bytes, %v; want the first half, then an unexpected EOF", len(body), err)
		}
	})
	t.Run("truncate request", func(t *testing.T) {
		p.Set(Rule{Op: Put, Fault: TruncateRequest})
		if _, _, err := do(t, c, http.MethodPut, p.URL()+"/bucket/pg/wal/c", obj); err == nil {
			t.Error("put: no error, want a reset")
		}
		deadline := time.Now().Add(5 * time.Second)
		for u.short.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if u.short.Load() != 1 {
			t.Errorf("the server saw %d short bodies, want 1", u.short.Load())
		}
		if u.has("/bucket/pg/wal/c") {
			t.Error("the server stored a body cut short")
		}
	})
	t.Run("every and limit", func(t *testing.T) {
		p.Set(Rule{Op: Get, Fault: SlowDown, Every: 3, Limit: 2})
		var got []int
		for range 9 {
			resp, _, err := do(t, c, http.MethodGet, url, nil)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, resp.StatusCode)
		}
		if want := []int{200, 200, 503, 200, 200, 503, 200, 200, 200}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("statuses %v, want %v", got, want)
		}
		if n := p.Injected(); len(n) != 1 || n[0] != 2 {
			t.Errorf("Injected = %v, want [2]", n)
		}
	})
	t.Run("list", func(t *testing.T) {
		p.Set(Rule{Op: List, Key: "pg/wal/", Fault: SlowDown})
		if resp, _, err := do(t, c, http.MethodGet, p.URL()+"/bucket?list-type=2&prefix=pg%2Fwal%2F", nil); err != nil || resp.StatusCode != 503 {
			t.Errorf("list: %v %v, want 503", resp, err)
		}
		if resp, _, err := do(t, c, http.MethodGet, p.URL()+"/bucket?list-type=2&prefix=pg%2Flocks%2F", nil); err != nil || resp.StatusCode == 503 {
			t.Errorf("list of another prefix: %v %v, want it through", resp, err)
		}
	})
}

func TestOverwrites(t *testing.T) {
	p, _, c := setup(t)
	put := func(key string, body []byte, h http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, p.URL()+"/bucket/"+key, bytes.NewReader(body))
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	put("pg/wal/x", []byte("same"), nil)
	put("pg/wal/x", []byte("same"), nil)
	put("pg/locks/l", []byte("one"), nil)
	put("pg/locks/l", []byte("two"), nil)
	// The same bytes in aws-chunked encoding, as streaming signatures send
	// them, with other signatures.
	streaming := http.Header{"X-Amz-Content-Sha256": {"STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}}
	put("pg/wal/x", []byte("2;chunk-signature=aaaa\r\nsa\r\n2;chunk-signature=bbbb\r\nme\r\n0;chunk-signature=cccc\r\n\r\n"), streaming)
	put("pg/wal/x", []byte("4;chunk-signature=dddd\r\nsame\r\n0;chunk-signature=eeee\r\n\r\n"), streaming)
	if got := p.Overwrites("/locks/"); len(got) != 0 {
		t.Errorf("Overwrites = %v, want none", got)
	}
	if got := p.Overwrites(); len(got) != 1 || !strings.HasPrefix(got[0], "pg/locks/l stored with 2") {
		t.Errorf("Overwrites without skipping = %v, want the lock", got)
	}
	put("pg/wal/x", []byte("different"), nil)
	if got := p.Overwrites("/locks/"); len(got) != 1 || !strings.HasPrefix(got[0], "pg/wal/x stored with 2") {
		t.Errorf("Overwrites = %v, want pg/wal/x", got)
	}
	if p.Written() != 2 {
		t.Errorf("Written = %d, want 2", p.Written())
	}
}

func TestCycle(t *testing.T) {
	p, _, c := setup(t)
	if resp, _, err := do(t, c, http.MethodPut, p.URL()+"/bucket/k", []byte("x")); err != nil || resp.StatusCode != 200 {
		t.Fatal(err)
	}
	p.Set(Rule{Op: Get, Cycle: []Fault{SlowDown, InternalError}, Every: 2})
	var got []string
	for range 6 {
		resp, _, err := do(t, c, http.MethodGet, p.URL()+"/bucket/k", nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprint(resp.StatusCode))
	}
	if want := "[200 503 200 500 200 503]"; fmt.Sprint(got) != want {
		t.Errorf("statuses %v, want %s", got, want)
	}
}
