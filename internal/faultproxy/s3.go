package faultproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Op is the kind of S3 request a rule matches.
type Op string

// The operations.
const (
	Any    Op = ""
	Put    Op = "put"    // object writes: PutObject, UploadPart, Create- and CompleteMultipartUpload
	Get    Op = "get"    // GetObject
	Head   Op = "head"   // HeadObject
	List   Op = "list"   // ListObjects and ListObjectsV2
	Delete Op = "delete" // DeleteObject, DeleteObjects, AbortMultipartUpload
	Other  Op = "other"  // bucket operations
)

func (o Op) String() string {
	if o == Any {
		return "any"
	}
	return string(o)
}

// request is what the proxy makes of an S3 request.
type request struct {
	op          Op
	bucket, key string
	match       string // what Rule.Key is matched against
}

// classify tells the S3 operation of a path-style request.
func classify(r *http.Request) request {
	bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	q := r.URL.Query()
	req := request{bucket: bucket, key: key, match: key}
	if key == "" {
		switch {
		case r.Method == http.MethodGet && !q.Has("location") && !q.Has("versioning") && !q.Has("policy") &&
			!q.Has("lifecycle") && !q.Has("uploads") && !q.Has("object-lock"):
			req.op, req.match = List, q.Get("prefix")
		case r.Method == http.MethodPost && q.Has("delete"):
			req.op = Delete
		default:
			req.op = Other
		}
		return req
	}
	switch r.Method {
	case http.MethodPut, http.MethodPost:
		req.op = Put
	case http.MethodGet:
		req.op = Get
	case http.MethodHead:
		req.op = Head
	case http.MethodDelete:
		req.op = Delete
	default:
		req.op = Other
	}
	return req
}

// Digest is the sha256 of an object's bytes as the server stored them; for
// an object uploaded in parts, the sha256 of its parts' digests in order
// (so an object written once whole and once in parts counts as two
// different contents, which the clients never do with the same bytes).
type Digest [32]byte

func (d Digest) String() string { return hex.EncodeToString(d[:8]) }

// record notes an object write the server accepted.
func (p *Proxy) record(req request, r *http.Request, body []byte, status int, answer []byte) {
	if req.op != Put || status/100 != 2 || r.Header.Get("X-Amz-Copy-Source") != "" {
		return
	}
	q := r.URL.Query()
	upload := q.Get("uploadId")
	switch {
	case r.Method == http.MethodPut && upload == "":
		payload, err := decodePayload(r, body)
		if err != nil {
			p.noteBad(req.key, err)
			return
		}
		p.noteWrite(req.key, sha256.Sum256(payload))
	case r.Method == http.MethodPut:
		n, err := strconv.Atoi(q.Get("partNumber"))
		payload, derr := decodePayload(r, body)
		if err != nil || derr != nil {
			p.noteBad(req.key, errors.Join(err, derr))
			return
		}
		p.mu.Lock()
		if p.parts[upload] == nil {
			p.parts[upload] = map[int]Digest{}
		}
		p.parts[upload][n] = sha256.Sum256(payload)
		p.mu.Unlock()
	case r.Method == http.MethodPost && upload != "":
		// CompleteMultipartUpload may fail with 200 and an error body.
		if bytes.Contains(answer, []byte("<Error>")) {
			return
		}
		var c struct {
			Parts []struct {
				PartNumber int
			} `xml:"Part"`
		}
		payload, err := decodePayload(r, body)
		if err == nil {
			err = xml.Unmarshal(payload, &c)
		}
		if err != nil {
			p.noteBad(req.key, err)
			return
		}
		h := sha256.New()
		p.mu.Lock()
		for _, part := range c.Parts {
			d, ok := p.parts[upload][part.PartNumber]
			if !ok {
				p.mu.Unlock()
				p.noteBad(req.key, fmt.Errorf("completed with part %d, which the proxy never saw stored", part.PartNumber))
				return
			}
			h.Write(d[:])
		}
		delete(p.parts, upload)
		p.mu.Unlock()
		p.noteWrite(req.key, Digest(h.Sum(nil)))
	}
}

func (p *Proxy) noteWrite(key string, d Digest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Contains(p.writes[key], d) {
		p.writes[key] = append(p.writes[key], d)
	}
}

// noteBad records a write whose contents the proxy could not tell: it
// counts as a content of its own, so that it shows.
func (p *Proxy) noteBad(key string, err error) {
	d := sha256.Sum256([]byte("faultproxy: unreadable write: " + err.Error()))
	p.noteWrite(key, d)
}

// Written returns how many keys the server accepted at least one write of.
func (p *Proxy) Written() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.writes)
}

// Overwrites describes every key that the server accepted writes of with
// different contents, except keys containing one of skip (objects that are
// meant to be replaced, such as a lease).
func (p *Proxy) Overwrites(skip ...string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for k, ds := range p.writes {
		if len(ds) < 2 || slices.ContainsFunc(skip, func(s string) bool { return strings.Contains(k, s) }) {
			continue
		}
		out = append(out, fmt.Sprintf("%s stored with %d different contents %v", k, len(ds), ds))
	}
	slices.Sort(out)
	return out
}

// decodePayload returns the object bytes of a request body, undoing the
// aws-chunked encoding of streaming signatures.
func decodePayload(r *http.Request, body []byte) ([]byte, error) {
	if !strings.HasPrefix(r.Header.Get("X-Amz-Content-Sha256"), "STREAMING-") &&
		!strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") {
		return body, nil
	}
	var out []byte
	for {
		line, rest, ok := bytes.Cut(body, []byte("\r\n"))
		if !ok {
			return nil, errors.New("aws-chunked body: a chunk header without its line end")
		}
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseUint(string(bytes.TrimSpace(size)), 16, 31)
		if err != nil {
			return nil, fmt.Errorf("aws-chunked body: chunk size %q", size)
		}
		if n == 0 {
			return out, nil // trailers, if any, follow
		}
		if uint64(len(rest)) < n+2 {
			return nil, errors.New("aws-chunked body: a chunk longer than the body")
		}
		out = append(out, rest[:n]...)
		body = rest[n+2:]
	}
}
