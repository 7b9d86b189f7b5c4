package system

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// NodeCommand returns the command that runs one cluster node: a program that
// calls RunNode with args (the harness binary's hidden subcommand).
type NodeCommand func(args []string) *exec.Cmd

// Cluster is a 3-node NATS JetStream cluster on 127.0.0.1, each node its own
// process with its own store.
type Cluster struct {
	// URL is the three client URLs, comma-separated (LLMQ_NATS_URL).
	URL string
	// Monitors are the nodes' HTTP monitoring base URLs.
	Monitors []string
	procs    []*proc
}

// StartCluster starts three nodes with node, storing under dir, on free
// loopback ports, and returns once all of them accept clients and the
// cluster's JetStream has a meta leader that sees all three (at most
// startTimeout). Their warnings and errors go to logOut.
func StartCluster(ctx context.Context, node NodeCommand, dir string, logOut io.Writer) (_ *Cluster, err error) {
	if node == nil {
		return nil, errors.New("no command to run a NATS cluster node")
	}
	ports, err := freePorts(3 * clusterSize)
	if err != nil {
		return nil, err
	}
	client, cluster, monitor := ports[:clusterSize], ports[clusterSize:2*clusterSize], ports[2*clusterSize:]
	c := &Cluster{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	var urls []string
	for i := range clusterSize {
		o := nodeOptions{
			Name:       "nats-" + strconv.Itoa(i+1),
			ClientPort: client[i], ClusterPort: cluster[i], MonitorPort: monitor[i],
			StoreDir: filepath.Join(dir, "nats-"+strconv.Itoa(i+1)),
		}
		for j, p := range cluster {
			if j != i {
				o.RoutePorts = append(o.RoutePorts, p)
			}
		}
		cmd := node(o.args())
		// The node stops when its stdin closes: the write end stays open
		// until the node exits, or this process does, even if it is killed.
		if _, err := cmd.StdinPipe(); err != nil {
			return nil, err
		}
		p, err := spawn(o.Name, cmd, nodeReadyMsg, logOut)
		if err != nil {
			return nil, err
		}
		c.procs = append(c.procs, p)
		urls = append(urls, "nats://"+net.JoinHostPort(loopback, strconv.Itoa(client[i])))
		c.Monitors = append(c.Monitors, "http://"+net.JoinHostPort(loopback, strconv.Itoa(monitor[i])))
	}
	deadline := time.Now().Add(startTimeout)
	for _, p := range c.procs {
		if err := p.awaitReady(ctx, deadline); err != nil {
			return nil, fmt.Errorf("NATS cluster: %w", err)
		}
	}
	c.URL = strings.Join(urls, ",")
	return c, nil
}

// freePorts returns n distinct ports that were free on 127.0.0.1 a moment
// ago (listened on at once, then closed).
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", net.JoinHostPort(loopback, "0"))
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Procs returns the nodes' processes, nats-1 first, for CPU accounting.
func (c *Cluster) Procs() []Proc {
	out := make([]Proc, len(c.procs))
	for i, p := range c.procs {
		out[i] = Proc{Name: p.name, PID: p.pid()}
	}
	return out
}

// Close stops the nodes (SIGTERM to all, then SIGKILL to any still there
// after a bound) and waits for them.
func (c *Cluster) Close() error {
	for _, p := range c.procs {
		p.terminate()
	}
	var errs []error
	for _, p := range c.procs {
		errs = append(errs, p.awaitExit())
	}
	return errors.Join(errs...)
}
