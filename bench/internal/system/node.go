package system

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// The cluster's settings, as deploy/nats/cluster.conf documents them (its
// ports, addresses and accounts aside): cluster name, server names nats-1,
// nats-2, nats-3, and the largest message.
const (
	clusterName = "llmq"
	clusterSize = 3
	maxPayload  = 1 << 20
	loopback    = "127.0.0.1"
)

// nodeReadyMsg is the log line a node writes once it is ready.
const nodeReadyMsg = "nats node ready"

// nodeOptions are one cluster node's settings, passed to its process as
// flags. Every address is 127.0.0.1; only the ports vary.
type nodeOptions struct {
	Name        string // server name, nats-1 …
	ClientPort  int
	ClusterPort int
	RoutePorts  []int // the other nodes' cluster ports
	MonitorPort int   // HTTP monitoring
	StoreDir    string
}

// args are o as the flags RunNode reads.
func (o nodeOptions) args() []string {
	routes := make([]string, len(o.RoutePorts))
	for i, p := range o.RoutePorts {
		routes[i] = strconv.Itoa(p)
	}
	return []string{"-name", o.Name, "-port", strconv.Itoa(o.ClientPort), "-cluster-port", strconv.Itoa(o.ClusterPort),
		"-routes", strings.Join(routes, ","), "-monitor-port", strconv.Itoa(o.MonitorPort), "-store", o.StoreDir}
}

func parseNodeArgs(args []string) (nodeOptions, error) {
	var o nodeOptions
	var routes string
	fs := flag.NewFlagSet("nats-node", flag.ContinueOnError)
	fs.StringVar(&o.Name, "name", "", "server name")
	fs.IntVar(&o.ClientPort, "port", 0, "client port on 127.0.0.1")
	fs.IntVar(&o.ClusterPort, "cluster-port", 0, "cluster port on 127.0.0.1")
	fs.StringVar(&routes, "routes", "", "comma-separated cluster ports of the other nodes on 127.0.0.1")
	fs.IntVar(&o.MonitorPort, "monitor-port", 0, "HTTP monitoring port on 127.0.0.1")
	fs.StringVar(&o.StoreDir, "store", "", "JetStream store directory")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.Name == "" || o.StoreDir == "" || o.ClientPort <= 0 || o.ClusterPort <= 0 || o.MonitorPort <= 0 || routes == "" || fs.NArg() > 0 {
		return o, fmt.Errorf("nats-node needs -name, -port, -cluster-port, -routes, -monitor-port and -store, and nothing else (got %q)", args)
	}
	for _, r := range strings.Split(routes, ",") {
		p, err := strconv.Atoi(r)
		if err != nil || p <= 0 || p > 65535 {
			return o, fmt.Errorf("nats-node: bad route port %q", r)
		}
		o.RoutePorts = append(o.RoutePorts, p)
	}
	return o, nil
}

// RunNode runs one node of a JetStream cluster on 127.0.0.1 in this process,
// with the settings in args (as StartCluster passes them), until ctx ends or
// stdin closes (the parent that holds its other end is gone). It logs JSON
// lines to logOut: the server's warnings and errors, and nodeReadyMsg once
// the node accepts clients and the cluster's JetStream has a meta leader
// that sees every node (so streams with 3 replicas can be placed).
func RunNode(ctx context.Context, args []string, stdin io.Reader, logOut io.Writer) error {
	o, err := parseNodeArgs(args)
	if err != nil {
		return err
	}
	routes := make([]string, len(o.RoutePorts))
	for i, p := range o.RoutePorts {
		routes[i] = "nats-route://" + net.JoinHostPort(loopback, strconv.Itoa(p))
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: o.Name,
		Host:       loopback,
		Port:       o.ClientPort,
		HTTPHost:   loopback,
		HTTPPort:   o.MonitorPort,
		MaxPayload: maxPayload,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		Cluster:    server.ClusterOpts{Name: clusterName, Host: loopback, Port: o.ClusterPort},
		Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
	})
	if err != nil {
		return fmt.Errorf("nats node %s: %w", o.Name, err)
	}
	log := slog.New(slog.NewJSONHandler(logOut, nil)).With("node", o.Name)
	srv.SetLoggerV2(serverLog{log}, false, false, false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, stdin); cancel() }()

	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(startTimeout) {
		return fmt.Errorf("nats node %s: not accepting clients after %s (port taken?)", o.Name, startTimeout)
	}
	if err := awaitMetaLeader(ctx, srv, startTimeout); err != nil {
		return fmt.Errorf("nats node %s: %w", o.Name, err)
	}
	log.Info(nodeReadyMsg, "url", srv.ClientURL())
	<-ctx.Done()
	return nil
}

// awaitMetaLeader polls until JetStream's meta group has a leader this node
// is current with, and, on the leader, until every node is a known peer.
func awaitMetaLeader(ctx context.Context, srv *server.Server, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if srv.JetStreamIsCurrent() && (!srv.JetStreamIsLeader() || len(srv.JetStreamClusterPeers()) >= clusterSize) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no JetStream meta leader that sees all %d nodes after %s", clusterSize, timeout)
		}
		select {
		case <-ctx.Done():
			return errors.Join(errors.New("stopped before the cluster was ready"), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serverLog writes the NATS server's log as JSON lines: notices at INFO,
// warnings at WARN, errors at ERROR; debug and trace are dropped.
type serverLog struct{ log *slog.Logger }

func (l serverLog) Noticef(format string, v ...any) { l.log.Info(fmt.Sprintf(format, v...)) }
func (l serverLog) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l serverLog) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLog) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLog) Debugf(string, ...any)           {}
func (l serverLog) Tracef(string, ...any)           {}

var _ server.Logger = serverLog{}
