// Package natscount reads the message counters of NATS servers from their
// HTTP monitoring endpoints (/varz and /connz), so that the benchmark can
// count the messages a run cost. Reading them sends no NATS message, and
// costs one HTTP request per endpoint and server: read before and after a
// run, not during it.
//
// What the counters include (nats-server 2.15): a message is counted in
// when a connection of the server (client, route to another cluster node,
// gateway or leaf node) sends it, and out each time the server delivers it
// to such a connection. Deliveries to the server's own internal
// subscriptions are not counted: JetStream storing a published message, or
// handling an API request or an ack, is one message in, none out. What
// JetStream sends to clients (publish acks, pulled messages, republished
// wake-up hints, API replies) is counted out, and in a cluster its
// replication and forwarding between the nodes is counted on the routes:
// out on the node that sends, in on the one that receives.
package natscount

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// InOut are messages received from (In) and delivered to (Out) connections.
type InOut struct{ In, Out int64 }

// Sum is In + Out.
func (c InOut) Sum() int64 { return c.In + c.Out }

func (c InOut) sub(b InOut) InOut { return InOut{c.In - b.In, c.Out - b.Out} }

// Counts are the counters of a set of servers at one moment, each summed
// over the servers.
type Counts struct {
	// All is varz's in_msgs and out_msgs: every connection (see the
	// package doc).
	All InOut
	// Clients is varz's in_client_msgs and out_client_msgs: client
	// connections only. All minus Clients is the traffic between cluster
	// nodes (routes).
	Clients InOut
	// ByConn is connz's in_msgs and out_msgs of the open client
	// connections, by connection name (connections with the same name,
	// on any server, added up; "" for unnamed ones).
	ByConn map[string]InOut
	// subs are subsz's messages delivered to each subscription, local to
	// its server (see Sub and PerRequest.BySub).
	subs map[subID]subCount
}

// subID names one subscription: its server (index in the URLs), client
// connection and subscription id.
type subID struct {
	server int
	cid    uint64
	sid    string
}

// subCount is a subscription's class (see subClass) and the messages it
// was delivered.
type subCount struct {
	class string
	msgs  int64
}

// Routes are the messages between cluster nodes: All minus Clients.
func (c Counts) Routes() InOut { return c.All.sub(c.Clients) }

// Sub returns c minus before: the messages between two readings. A
// connection or subscription of c that before lacks counts from zero; one
// that c lacks (closed in between) is left out.
func (c Counts) Sub(before Counts) Counts {
	d := Counts{All: c.All.sub(before.All), Clients: c.Clients.sub(before.Clients), ByConn: make(map[string]InOut, len(c.ByConn)),
		subs: make(map[subID]subCount, len(c.subs))}
	for name, v := range c.ByConn {
		d.ByConn[name] = v.sub(before.ByConn[name])
	}
	for id, v := range c.subs {
		d.subs[id] = subCount{class: v.class, msgs: v.msgs - before.subs[id].msgs}
	}
	return d
}

// BySub adds up the messages delivered to the subscriptions by class:
// "owner subject", the owner being the client connection's name or
// "server" for the server's internal subscriptions (JetStream's streams,
// consumers and API, the cluster's replication), the subject with its
// unique parts (inbox and consumer names) written as "*".
func (c Counts) BySub() map[string]int64 {
	out := make(map[string]int64)
	for _, v := range c.subs {
		if v.msgs != 0 {
			out[v.class] += v.msgs
		}
	}
	return out
}

// Read reads the counters of the servers whose monitoring base URLs (such
// as http://127.0.0.1:8222) are given, with hc.
func Read(ctx context.Context, hc *http.Client, monitorURLs []string) (Counts, error) {
	c := Counts{ByConn: make(map[string]InOut), subs: make(map[subID]subCount)}
	for i, u := range monitorURLs {
		var v server.Varz
		if err := get(ctx, hc, u+"/varz", &v); err != nil {
			return c, err
		}
		c.All.In += v.InMsgs
		c.All.Out += v.OutMsgs
		c.Clients.In += v.InClientMsgs
		c.Clients.Out += v.OutClientMsgs
		var cz server.Connz
		// The benchmark's systems have a handful of connections; the
		// limit only keeps a surprise bounded.
		if err := get(ctx, hc, u+"/connz?limit=4096", &cz); err != nil {
			return c, err
		}
		if cz.Total > len(cz.Conns) {
			return c, fmt.Errorf("%s/connz: %d connections, more than one page", u, cz.Total)
		}
		names := make(map[uint64]string, len(cz.Conns))
		for _, ci := range cz.Conns {
			s := c.ByConn[ci.Name]
			s.In += ci.InMsgs
			s.Out += ci.OutMsgs
			c.ByConn[ci.Name] = s
			names[ci.Cid] = ci.Name
		}
		var sz server.Subsz
		if err := get(ctx, hc, u+"/subsz?subs=1&limit=1000000", &sz); err != nil {
			return c, err
		}
		if sz.Total > len(sz.Subs) {
			return c, fmt.Errorf("%s/subsz: %d subscriptions, more than one page", u, sz.Total)
		}
		for _, sd := range sz.Subs {
			owner, ok := names[sd.Cid]
			if !ok {
				owner = "server"
			}
			c.subs[subID{i, sd.Cid, sd.Sid}] = subCount{class: owner + " " + subClass(sd.Subject), msgs: sd.Msgs}
		}
	}
	return c, nil
}

// subClass writes subject with its unique parts as "*": the tokens after
// $JS.ACK.<stream> and $NRG.<kind>, the consumer of
// $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>, and tokens that look like
// generated names (inboxes: eight or more letters and digits, mixed case or
// with digits).
func subClass(subject string) string {
	t := strings.Split(subject, ".")
	switch {
	case len(t) > 3 && t[0] == "$JS" && t[1] == "ACK":
		return strings.Join(t[:3], ".") + ".>"
	case len(t) > 2 && t[0] == "$NRG":
		return strings.Join(t[:2], ".") + ".>"
	case len(t) == 7 && strings.HasPrefix(subject, "$JS.API.CONSUMER.MSG.NEXT."):
		return strings.Join(t[:6], ".") + ".*"
	}
	for i, tok := range t {
		if generated(tok) {
			t[i] = "*"
		}
	}
	return strings.Join(t, ".")
}

// generated reports whether tok looks like a generated name (a NUID or
// part of one): at least eight letters and digits only, not all lower case
// letters.
func generated(tok string) bool {
	if len(tok) < 8 {
		return false
	}
	lower := true
	for _, r := range tok {
		switch {
		case r >= 'a' && r <= 'z':
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			lower = false
		default:
			return false
		}
	}
	return !lower
}

func get(ctx context.Context, hc *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("NATS monitoring: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("NATS monitoring: GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("NATS monitoring: GET %s: %w", url, err)
	}
	return nil
}

// Rate is messages per request, in and out.
type Rate struct{ In, Out float64 }

// Sum is In + Out.
func (r Rate) Sum() float64 { return r.In + r.Out }

// PerRequest are Counts divided by a number of requests.
type PerRequest struct {
	All, Clients, Routes Rate
	ByConn               map[string]Rate
	// BySub are Counts.BySub per request.
	BySub map[string]float64
}

// Per divides c by n requests (n > 0).
func (c Counts) Per(n int) PerRequest {
	per := func(v InOut) Rate { return Rate{float64(v.In) / float64(n), float64(v.Out) / float64(n)} }
	p := PerRequest{All: per(c.All), Clients: per(c.Clients), Routes: per(c.Routes()), ByConn: make(map[string]Rate, len(c.ByConn)),
		BySub: make(map[string]float64)}
	for name, v := range c.ByConn {
		p.ByConn[name] = per(v)
	}
	for class, v := range c.BySub() {
		p.BySub[class] = float64(v) / float64(n)
	}
	return p
}
