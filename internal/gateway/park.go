package gateway

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// parkedWriteTimeout bounds writing the answer to a parked connection.
const parkedWriteTimeout = 10 * time.Second

// parked is a request whose HTTP/1.x connection the gateway took over from
// net/http (Options.ParkAfter) while it waits in the queue. Until it is
// answered it holds the connection, this struct and the client's waiter:
// no goroutine, none of net/http's per-connection buffers. It is a
// client.Parker.
//
// The caller's departure is noticed without a goroutine while the request
// waits (Alive peeks at the socket when a worker wants to start it: a
// closed connection refuses the pickup, so no provider is called) and with
// one while the provider is called (Started: a read that ends when the
// caller closes its connection cancels the call, as net/http's request
// context does for a request waiting in its handler). The answer is written
// with "Connection: close": the connection cannot go back to net/http.
type parked struct {
	s     *Server
	w     http.ResponseWriter // until Park
	conn  net.Conn            // from Park
	ids   idHeaders
	l     labels
	path  string
	major int // the request's HTTP version
	minor int

	answered atomic.Bool
	watched  atomic.Bool // Started: a goroutine reads the connection
	gone     atomic.Bool // the caller closed its end

	prev, next *parked // in the server's parkedSet
}

var _ client.Parker = (*parked)(nil)

// Park takes the connection over from net/http. It fails for connections
// net/http cannot give away (HTTP/2), which then wait in the handler.
func (p *parked) Park() bool {
	if !p.s.parkable() {
		return false
	}
	conn, _, err := http.NewResponseController(p.w).Hijack()
	if err != nil {
		return false
	}
	p.w, p.conn = nil, conn // the response and its buffers go with the handler
	p.s.track(p)
	return true
}

// Alive reports whether the caller still holds its end of the connection.
func (p *parked) Alive() bool {
	if peerGone(p.conn) {
		p.gone.Store(true)
		return false
	}
	return true
}

// Started watches the connection while a worker calls the provider.
func (p *parked) Started(cancel func()) {
	p.watched.Store(true)
	go func() {
		var buf [64]byte
		for { // until the caller closes, or Done closes the connection
			if _, err := p.conn.Read(buf[:]); err != nil {
				break
			}
		}
		if !p.answered.Load() {
			p.gone.Store(true)
			cancel()
		}
	}()
}

// Done writes the answer, closes the connection and records the request.
func (p *parked) Done(resp *client.Response, info client.Result, err error) {
	p.answered.Store(true)
	rw := &bufferedResponse{header: make(http.Header)}
	outcome, status := p.s.answer(rw, p.gone.Load(), p.ids, &p.l, resp, info, err)
	if outcome != messages.OutcomeCancelled { // else nobody reads it
		if werr := rw.send(p.conn, p.major, p.minor); werr != nil {
			p.s.log.Debug("writing a parked request's answer", "request_id", p.ids.id, "error", werr)
		}
	}
	_ = p.conn.Close()
	p.s.untrack(p)
	p.s.record(context.Background(), &p.l, p.path, p.ids.id, outcome, status)
}

// parkedSet is the server's parked requests, for Shutdown: a list through
// the requests themselves (a map would keep the size of its largest crowd).
type parkedSet struct {
	mu     sync.Mutex
	head   *parked
	n      int
	closed bool
}

func (ps *parkedSet) add(p *parked) {
	p.next = ps.head
	if ps.head != nil {
		ps.head.prev = p
	}
	ps.head = p
	ps.n++
}

// remove takes p out of the set and reports whether it was in it.
func (ps *parkedSet) remove(p *parked) bool {
	if p.prev == nil && ps.head != p {
		return false
	}
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		ps.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	}
	p.prev, p.next = nil, nil
	ps.n--
	return true
}

func (s *Server) parkable() bool {
	s.parked.mu.Lock()
	defer s.parked.mu.Unlock()
	return !s.parked.closed
}

// track adds p to the parked requests; after Close it closes p's
// connection instead (its caller sees it cut, its request is refused at
// pickup).
func (s *Server) track(p *parked) {
	s.parked.mu.Lock()
	if s.parked.closed {
		s.parked.mu.Unlock()
		_ = p.conn.Close()
		return
	}
	s.parked.add(p)
	s.parked.mu.Unlock()
	s.opts.Metrics.Parked(1)
}

func (s *Server) untrack(p *parked) {
	s.parked.mu.Lock()
	ok := s.parked.remove(p)
	s.parked.mu.Unlock()
	if ok {
		s.opts.Metrics.Parked(-1)
	}
}

// Shutdown waits until every parked request whose caller still waits is
// answered, or ctx ends, when it closes the connections of those left (see
// Close). Requests that still
// wait in a handler are http.Server.Shutdown's; call this after it, since a
// handler may park its request while the server drains.
func (s *Server) Shutdown(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if s.waitingCallers() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// waitingCallers drops the parked requests whose callers left (their
// requests are refused at pickup or end at their deadline) and returns how
// many callers still wait.
func (s *Server) waitingCallers() int {
	s.parked.mu.Lock()
	all := make([]*parked, 0, s.parked.n)
	for p := s.parked.head; p != nil; p = p.next {
		all = append(all, p)
	}
	s.parked.mu.Unlock()
	n := 0
	for _, p := range all {
		// A request being served has a goroutine reading its connection
		// (which would block the peek); that read notices a departure.
		if p.watched.Load() || !peerGone(p.conn) {
			n++
			continue
		}
		_ = p.conn.Close()
		s.untrack(p)
	}
	return n
}

// Close cuts the connections of the parked requests and parks no more. A
// caller sees its connection closed, as http.Server.Close does to requests
// waiting in handlers; a request still queued is refused at pickup, and one
// being served is cancelled.
func (s *Server) Close() {
	s.parked.mu.Lock()
	s.parked.closed = true
	conns := make([]net.Conn, 0, s.parked.n)
	for p := s.parked.head; p != nil; p = p.next {
		conns = append(conns, p.conn)
	}
	s.parked.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// bufferedResponse is an http.ResponseWriter that keeps the answer for a
// parked connection.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

// send writes the response to conn in HTTP/1.x, with "Connection: close".
func (b *bufferedResponse) send(conn net.Conn, major, minor int) error {
	b.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	res := &http.Response{
		StatusCode: b.status, ProtoMajor: major, ProtoMinor: minor, Header: b.header,
		Body: io.NopCloser(&b.body), ContentLength: int64(b.body.Len()), Close: true,
	}
	if err := conn.SetWriteDeadline(time.Now().Add(parkedWriteTimeout)); err != nil {
		return err
	}
	bw := bufio.NewWriter(conn)
	if err := res.Write(bw); err != nil {
		return err
	}
	return bw.Flush()
}
