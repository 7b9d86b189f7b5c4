package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/llmq/llmq/internal/fakeupstream"
)

// The spare upstream: a second fake upstream, reached through a port that
// can be closed (downable), serves two deployments (spareDeployments):
// soak-a-1, the second deployment of group soak-a, whose calls that fail
// are retried on whichever deployment of soak-a has room; and soak-c-0, the
// only deployment of group soak-c, so that every attempt of a soak-c
// request hits the spare and a fault reaches its caller as a clear error.
// In windows of the run, measured in requests sent, the spare misbehaves:
// first its host is down (the port refuses connections; kept-alive
// connections are reset at their next request), later it answers garbage,
// cuts its answers short, or hangs until the deployment's timeout. Between
// the windows it serves normally.

// spareDeployment is a deployment on the spare upstream.
type spareDeployment struct {
	id, group string
	parallel  int // max_parallel_requests
}

// spareDeployments are the deployments on the spare upstream. Their limits
// are low and their call timeout short (spareTimeout), so that while the
// spare hangs it holds few worker slots, for little time.
var spareDeployments = []spareDeployment{
	{id: "soak-a-1", group: "soak-a", parallel: 8},
	{id: "soak-c-0", group: spareOnlyGroup, parallel: 4},
}

// spareOnlyGroup is the model group whose one deployment is on the spare
// upstream; every tenth request goes to it.
const spareOnlyGroup = "soak-c"

// spareTimeout is the spare deployments' call timeout, in seconds.
const spareTimeout = 3

// onSpare reports whether deployment is on the spare upstream.
func onSpare(deployment string) bool {
	return slices.ContainsFunc(spareDeployments, func(d spareDeployment) bool { return d.id == deployment })
}

// spareReply is the spare upstream's answer text; it tells its answers apart
// from the main upstream's.
const spareReply = "hello from the spare upstream"

// window is a span of the run in which the spare deployment misbehaves.
type window struct {
	name     string
	fault    fakeupstream.Fault // what the spare upstream does with each call
	refuse   bool               // its port is closed too
	from, to float64            // when, as fractions of the requests sent
	// start and end are when it began and ended, since the load began;
	// written by runWindows, read after it returned.
	start, end time.Duration
	happened   bool
}

// spareWindows are the windows, all in the first half of the run: the NATS
// restart comes at its half, and in a short run the outage that follows
// would swallow later windows.
func spareWindows() []*window {
	return []*window{
		{name: "host down", fault: fakeupstream.FaultReset, refuse: true, from: 0.05, to: 0.20},
		{name: "garbage", fault: fakeupstream.FaultGarbage, from: 0.23, to: 0.30},
		{name: "cut short", fault: fakeupstream.FaultCut, from: 0.33, to: 0.40},
		{name: "hang", fault: fakeupstream.FaultHang, from: 0.43, to: 0.48},
	}
}

// runWindows opens and closes the windows as the count of requests sent
// passes their bounds, until every window is closed, stop is closed or ctx
// ends. A window still open then is closed. Failures to reopen the port are
// noted in f.
func runWindows(ctx context.Context, stop <-chan struct{}, ws []*window, n int, sent *atomic.Int64, began time.Time, fake *fakeupstream.Server, port *downable, f *faults) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var open *window
	closeWindow := func() {
		fake.SetFault(fakeupstream.FaultNone)
		if open.refuse {
			if err := port.up(); err != nil {
				f.add("%6.1fs the spare deployment's port did not reopen: %v", time.Since(began).Seconds(), err)
			}
		}
		open.end = time.Since(began)
		f.add("%6.1fs spare upstream: %s window ends", open.end.Seconds(), open.name)
		open = nil
	}
	defer func() {
		if open != nil {
			closeWindow()
		}
	}()
	for _, w := range ws {
		for {
			s := float64(sent.Load())
			switch {
			case open == nil && s >= w.from*float64(n):
				open = w
				w.happened = true
				w.start = time.Since(began)
				fake.SetFault(w.fault)
				if w.refuse {
					port.down()
				}
				f.add("%6.1fs spare upstream: %s window begins (%s)", w.start.Seconds(), w.name, w.describe())
			case open == w && s >= w.to*float64(n):
				closeWindow()
			}
			if w.happened && open == nil {
				break
			}
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}
}

func (w *window) describe() string {
	if w.refuse {
		return "port closed: new connections refused, kept-alive ones reset"
	}
	switch w.fault {
	case fakeupstream.FaultGarbage:
		return "200 with an HTML page"
	case fakeupstream.FaultCut:
		return "a body or stream cut short"
	case fakeupstream.FaultHang:
		return "no answer until the deployment's timeout"
	}
	return "fault " + w.fault.String()
}

// downable forwards TCP connections from a fixed loopback port to an
// upstream. Taking it down closes the port, so new connections are refused,
// as when a host is down; connections already open are left to the
// upstream. Its methods are safe for concurrent use.
type downable struct {
	addr   string
	target string

	mu     sync.Mutex
	ln     net.Listener // nil while down
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newDownable(target string) (*downable, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &downable{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	d.serve(ln)
	return d, nil
}

func (d *downable) serve(ln net.Listener) {
	d.ln = ln
	d.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.wg.Go(func() { d.forward(c) })
		}
	})
}

// forward copies both ways until either side ends, then closes both.
func (d *downable) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", d.target, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = c.Close()
		_ = up.Close()
		return
	}
	d.conns[c], d.conns[up] = struct{}{}, struct{}{}
	d.mu.Unlock()
	// fromUp carries the end of the upstream-to-client copy, fromClient
	// the other; whichever ends first ends the connection.
	fromUp, fromClient := make(chan error, 1), make(chan error, 1)
	go func() { _, err := io.Copy(c, up); fromUp <- err }()
	go func() { _, err := io.Copy(up, c); fromClient <- err }()
	var first error
	upEnded := false
	select {
	case first = <-fromUp:
		upEnded = true
	case first = <-fromClient:
	}
	// An upstream that reset the connection is passed on as a reset, one
	// that closed it as a close: the client sees what it would see
	// without the forwarder.
	if tc, ok := c.(*net.TCPConn); ok && errors.Is(first, syscall.ECONNRESET) {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
	_ = up.Close()
	if upEnded {
		<-fromClient
	} else {
		<-fromUp
	}
	d.mu.Lock()
	delete(d.conns, c)
	delete(d.conns, up)
	d.mu.Unlock()
}

// down closes the port.
func (d *downable) down() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ln != nil {
		_ = d.ln.Close()
		d.ln = nil
	}
}

// up opens the port again, trying for up to 5 s.
func (d *downable) up() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ln != nil || d.closed {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", d.addr)
		if err == nil {
			d.serve(ln)
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// close closes the port and every connection and waits for the forwarding
// goroutines.
func (d *downable) close() {
	d.mu.Lock()
	d.closed = true
	if d.ln != nil {
		_ = d.ln.Close()
		d.ln = nil
	}
	for c := range d.conns {
		_ = c.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// windowRow is what the summary says about one window and one spare
// deployment.
type windowRow struct {
	w *window
	d spareDeployment
	// calls is how many calls of the deployment the spare upstream received
	// with the window's fault; requests is how the requests those calls
	// belonged to ended.
	calls    int
	requests map[string]int
	// sent is how the requests of the deployment's group sent during the
	// window ended.
	sent map[string]int
}

// spareRows tallies the windows. outcomeOf names how a request ended, by
// its content; sentIn lists the requests of a group sent between two
// times, each by the name of how it ended.
func spareRows(ws []*window, spareCalls []fakeupstream.Request, outcomeOf func(content string) string, sentIn func(group string, from, to time.Duration) []string) []windowRow {
	var rows []windowRow
	for _, w := range ws {
		if !w.happened {
			continue
		}
		for _, d := range spareDeployments {
			rows = append(rows, spareRow(w, d, spareCalls, outcomeOf, sentIn))
		}
	}
	return rows
}

func spareRow(w *window, d spareDeployment, spareCalls []fakeupstream.Request, outcomeOf func(content string) string, sentIn func(group string, from, to time.Duration) []string) windowRow {
	r := windowRow{w: w, d: d, requests: map[string]int{}, sent: map[string]int{}}
	seen := map[string]bool{}
	for _, c := range spareCalls {
		if c.Fault != w.fault || c.Fault == fakeupstream.FaultNone || c.Model != upstreamModel(d.group) {
			continue
		}
		r.calls++
		if !seen[c.Content] {
			seen[c.Content] = true
			r.requests[outcomeOf(c.Content)]++
		}
	}
	for _, k := range sentIn(d.group, w.start, w.end) {
		r.sent[k]++
	}
	return r
}

// upstreamModel is the provider model of a group's deployments, the
// "model" the upstream sees.
func upstreamModel(group string) string { return group + "-upstream" }

// tally formats counts by name, largest first.
func tally(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
