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
}

// Routes are the messages between cluster nodes: All minus Clients.
func (c Counts) Routes() InOut { return c.All.sub(c.Clients) }

// Sub returns c minus before: the messages between two readings. A
// connection of c that before lacks counts from zero.
func (c Counts) Sub(before Counts) Counts {
	d := Counts{All: c.All.sub(before.All), Clients: c.Clients.sub(before.Clients), ByConn: make(map[string]InOut, len(c.ByConn))}
	for name, v := range c.ByConn {
		d.ByConn[name] = v.sub(before.ByConn[name])
	}
	return d
}

// Read reads the counters of the servers whose monitoring base URLs (such
// as http://127.0.0.1:8222) are given, with hc.
func Read(ctx context.Context, hc *http.Client, monitorURLs []string) (Counts, error) {
	c := Counts{ByConn: make(map[string]InOut)}
	for _, u := range monitorURLs {
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
		for _, ci := range cz.Conns {
			s := c.ByConn[ci.Name]
			s.In += ci.InMsgs
			s.Out += ci.OutMsgs
			c.ByConn[ci.Name] = s
		}
	}
	return c, nil
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
}

// Per divides c by n requests (n > 0).
func (c Counts) Per(n int) PerRequest {
	per := func(v InOut) Rate { return Rate{float64(v.In) / float64(n), float64(v.Out) / float64(n)} }
	p := PerRequest{All: per(c.All), Clients: per(c.Clients), Routes: per(c.Routes()), ByConn: make(map[string]Rate, len(c.ByConn))}
	for name, v := range c.ByConn {
		p.ByConn[name] = per(v)
	}
	return p
}
