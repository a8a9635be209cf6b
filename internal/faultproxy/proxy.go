package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fault is what happens to a request that a rule picks.
type Fault int

// The faults.
const (
	// Reset resets the client's connection (TCP RST) before the request
	// reaches the server.
	Reset Fault = iota + 1
	// ResetAfter lets the server handle the request, then resets the
	// client's connection instead of passing the answer on: a write the
	// client cannot know succeeded.
	ResetAfter
	// InternalError answers 500 InternalError; the server never sees the
	// request.
	InternalError
	// SlowDown answers 503 SlowDown; the server never sees the request.
	SlowDown
	// Delay waits Rule.Delay, then passes the request on.
	Delay
	// Truncate passes the server's answer on with its status, headers and
	// Content-Length but only the first half of its body, then closes the
	// connection. An answer without a body (HEAD, most writes) is reset
	// instead, as ResetAfter.
	Truncate
	// TruncateRequest sends the server only the first half of the request's
	// body before breaking the connection to it, then resets the client's.
	// A request without a body is reset, as Reset.
	TruncateRequest
)

func (f Fault) String() string {
	switch f {
	case Reset:
		return "reset"
	case ResetAfter:
		return "reset-after"
	case InternalError:
		return "500"
	case SlowDown:
		return "503-slowdown"
	case Delay:
		return "delay"
	case Truncate:
		return "truncate"
	case TruncateRequest:
		return "truncate-request"
	}
	return "fault(" + strconv.Itoa(int(f)) + ")"
}

// Rule picks requests and says what happens to them.
type Rule struct {
	Op Op // Any: every operation
	// Key, if set, must be contained in the request's object key (for
	// List, its prefix parameter). Keys hold the store's prefix, not the
	// bucket.
	Key   string
	Fault Fault
	// Cycle, if set, replaces Fault: the rule's faults take its faults in
	// turn.
	Cycle []Fault
	// Every faults the Every-th, 2·Every-th, ... request the rule matches;
	// 0 or 1 faults each.
	Every int
	// Limit bounds how many requests the rule faults; 0 is no limit.
	Limit int
	// Delay is how long Delay waits.
	Delay time.Duration
}

func (r Rule) String() string {
	s := r.Fault.String()
	if len(r.Cycle) > 0 {
		var names []string
		for _, f := range r.Cycle {
			names = append(names, f.String())
		}
		s = strings.Join(names, ", ")
	}
	if r.Fault == Delay {
		s += " " + r.Delay.String()
	}
	s += " on " + r.Op.String()
	if r.Key != "" {
		s += " of *" + r.Key + "*"
	}
	if r.Every > 1 {
		s += " every " + strconv.Itoa(r.Every)
	}
	return s
}

type rule struct {
	Rule
	matched  int
	injected int
}

// Proxy is a fault-injecting HTTP proxy in front of one S3 server.
type Proxy struct {
	target *url.URL
	ln     net.Listener
	srv    *http.Server
	tr     *http.Transport

	mu       sync.Mutex
	rules    []*rule
	requests map[Op]int
	writes   map[string][]Digest // key → the distinct contents the server accepted, in order
	parts    map[string]map[int]Digest
}

// New starts a proxy on a free loopback port in front of target, an
// http://host:port base URL.
func New(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: target %q: want http://host:port", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{
		target:   u,
		ln:       ln,
		tr:       &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64, ResponseHeaderTimeout: 2 * time.Minute},
		requests: map[Op]int{},
		writes:   map[string][]Digest{},
		parts:    map[string]map[int]Digest{},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: time.Minute, ErrorLog: nil}
	go func() { _ = p.srv.Serve(ln) }()
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

// Close stops the proxy, closing every connection.
func (p *Proxy) Close() {
	_ = p.srv.Close()
	p.tr.CloseIdleConnections()
}

// Endpoint is the proxy's host:port.
func (p *Proxy) Endpoint() string { return p.ln.Addr().String() }

// URL is the proxy's base URL.
func (p *Proxy) URL() string { return "http://" + p.Endpoint() }

// Set replaces the rules. The first rule that matches a request and is due
// decides its fault; a request no rule picks passes through.
func (p *Proxy) Set(rules ...Rule) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = p.rules[:0]
	for _, r := range rules {
		for _, f := range append([]Fault{r.Fault}, r.Cycle...) {
			if (f < Reset || f > TruncateRequest) && !(f == 0 && len(r.Cycle) > 0) {
				panic("faultproxy: rule without a valid fault: " + r.String())
			}
		}
		p.rules = append(p.rules, &rule{Rule: r})
	}
}

// Clear removes every rule: requests pass through.
func (p *Proxy) Clear() { p.Set() }

// Injected returns how many requests each rule of the last Set faulted, in
// the order given.
func (p *Proxy) Injected() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int, len(p.rules))
	for i, r := range p.rules {
		out[i] = r.injected
	}
	return out
}

// Requests returns how many requests of op the proxy received; Any counts
// all.
func (p *Proxy) Requests(op Op) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if op == Any {
		n := 0
		for _, c := range p.requests {
			n += c
		}
		return n
	}
	return p.requests[op]
}

// pick counts the request against the rules and returns the rule that
// faults it, if any.
func (p *Proxy) pick(op Op, key string) (Rule, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests[op]++
	for _, r := range p.rules {
		if (r.Op != Any && r.Op != op) || (r.Key != "" && !strings.Contains(key, r.Key)) {
			continue
		}
		if r.Limit > 0 && r.injected >= r.Limit {
			continue
		}
		r.matched++
		if r.Every > 1 && r.matched%r.Every != 0 {
			continue
		}
		picked := r.Rule
		if len(r.Cycle) > 0 {
			picked.Fault = r.Cycle[r.injected%len(r.Cycle)]
		}
		r.injected++
		return picked, true
	}
	return Rule{}, false
}

// maxBody bounds a request body the proxy holds in memory.
const maxBody = 256 << 20

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req := classify(r)
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		reset(w)
		return
	}
	if len(body) > maxBody {
		writeError(w, r, http.StatusRequestEntityTooLarge, "EntityTooLarge", "faultproxy holds request bodies of up to 256 MiB", req)
		return
	}
	rule, faulted := p.pick(req.op, req.match)
	fault := Fault(0)
	if faulted {
		fault = rule.Fault
	}
	switch fault {
	case Reset:
		reset(w)
		return
	case InternalError:
		writeError(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error, please try again. (faultproxy)", req)
		return
	case SlowDown:
		writeError(w, r, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate. (faultproxy)", req)
		return
	case Delay:
		select {
		case <-time.After(rule.Delay):
		case <-r.Context().Done():
			return
		}
	case TruncateRequest:
		if len(body) > 0 {
			broken := io.MultiReader(bytes.NewReader(body[:len(body)/2]), errReader{errors.New("faultproxy: request body cut short")})
			if resp, err := p.forward(r, broken, int64(len(body))); err == nil {
				resp.Body.Close()
			}
		}
		reset(w)
		return
	}
	resp, err := p.forward(r, bytes.NewReader(body), int64(len(body)))
	if err != nil {
		// The server broke the connection: so does the proxy.
		reset(w)
		return
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		reset(w)
		return
	}
	p.record(req, r, body, resp.StatusCode, answer)
	switch {
	case fault == ResetAfter, fault == Truncate && (len(answer) < 2 || r.Method == http.MethodHead):
		reset(w)
		return
	}
	h := w.Header()
	for k, vv := range resp.Header {
		if !hopByHop(k) {
			h[k] = vv
		}
	}
	if r.Method != http.MethodHead {
		h.Set("Content-Length", strconv.Itoa(len(answer)))
	}
	w.WriteHeader(resp.StatusCode)
	if fault == Truncate {
		_, _ = w.Write(answer[:len(answer)/2])
		_ = http.NewResponseController(w).Flush()
		// The connection closes without the rest of the body.
		panic(http.ErrAbortHandler)
	}
	_, _ = w.Write(answer)
}

// forward sends r to the server with body, keeping r's Host header, which
// the client signed.
func (p *Proxy) forward(r *http.Request, body io.Reader, n int64) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = p.target.Scheme, p.target.Host
	out.Host = r.Host
	out.ContentLength = n
	out.TransferEncoding = nil
	out.Body = http.NoBody
	if n > 0 {
		out.Body = io.NopCloser(body)
	}
	for k := range out.Header {
		if hopByHop(k) {
			out.Header.Del(k)
		}
	}
	return p.tr.RoundTrip(out)
}

func hopByHop(k string) bool {
	switch http.CanonicalHeaderKey(k) {
	case "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// reset drops the client's connection with a TCP RST.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// writeError answers with S3's XML error body.
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string, req request) {
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><BucketName>%s</BucketName><Key>%s</Key><Resource>%s</Resource><RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>`,
		code, msg, xmlEscape(req.bucket), xmlEscape(req.key), xmlEscape(r.URL.Path))
	h := w.Header()
	h.Set("Content-Type", "application/xml")
	h.Set("X-Amz-Request-Id", "FAULTPROXY")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, body)
	}
}

func xmlEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		case '"':
			b.WriteString("&quot;")
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}
