// Package natsembed runs the NATS server with JetStream inside the gateway
// process, so that one command gives a working system. Clients in the same
// process connect through [Server.Connect] without TCP; other processes
// (workers, internal services) connect to the listen address. The server's
// HTTP monitoring endpoints (/varz, /connz, /jsz, …) are off unless
// [Options.Monitor] names a loopback address.
package natsembed

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configure the embedded server.
type Options struct {
	// Listen is host:port for clients. Port 0 or -1 picks a free port; an
	// empty Listen accepts in-process connections only. The host must be a
	// loopback address: the embedded server has no authentication.
	Listen string
	// StoreDir is the JetStream store directory.
	StoreDir string
	// Name is the server name; default "llmq-embedded".
	Name string
	// Monitor is host:port of the HTTP monitoring endpoints. Port 0 or -1
	// picks a free port; empty (the default) serves none. The host must be
	// a loopback address, as for Listen.
	Monitor string
}

// Server is a running embedded NATS server.
type Server struct {
	srv *server.Server
}

// ErrNotLoopback reports a listen address the embedded server refuses.
var ErrNotLoopback = errors.New("the embedded NATS server has no authentication and listens only on loopback (127.0.0.1, ::1 or localhost)")

// Start starts the server and waits until it accepts connections.
func Start(opts Options) (*Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	so := &server.Options{
		ServerName: opts.Name,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	}
	if so.ServerName == "" {
		so.ServerName = "llmq-embedded"
	}
	if opts.Listen == "" {
		so.DontListen = true
	} else {
		host, port, err := loopbackHostPort("listen", opts.Listen)
		if err != nil {
			return nil, err
		}
		so.Host, so.Port = host, port
	}
	if opts.Monitor != "" {
		host, port, err := loopbackHostPort("monitor", opts.Monitor)
		if err != nil {
			return nil, err
		}
		so.HTTPHost, so.HTTPPort = host, port
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded NATS: not ready after 10s (is the port taken?)")
	}
	return &Server{srv: srv}, nil
}

// loopbackHostPort splits addr, the server's what address, into a loopback
// host and a port for server.Options, where port 0 means "none": port 0 in
// addr becomes server.RANDOM_PORT (a free port).
func loopbackHostPort(what, addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("embedded NATS %s address %q: %w", what, addr, err)
	}
	if !isLoopback(host) {
		return "", 0, fmt.Errorf("embedded NATS %s address %q: %w", what, addr, ErrNotLoopback)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", 0, fmt.Errorf("embedded NATS %s address %q: bad port", what, addr)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	return host, p, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ClientURL returns the nats:// URL other processes use, or "" when the
// server does not listen on TCP.
func (s *Server) ClientURL() string {
	if s.srv.Addr() == nil {
		return ""
	}
	return s.srv.ClientURL()
}

// MonitorURL returns the http:// base URL of the monitoring endpoints, or ""
// when the server serves none.
func (s *Server) MonitorURL() string {
	a := s.srv.MonitorAddr()
	if a == nil {
		return ""
	}
	return "http://" + a.String()
}

// Connect opens an in-process client connection.
func (s *Server) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name(name), nats.InProcessServer(s.srv), nats.MaxReconnects(-1)}, opts...)
	return nats.Connect("", opts...)
}

// Shutdown stops the server and waits until it is down.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// Log writes the server's address to log.
func (s *Server) Log(log *slog.Logger) {
	log.Info("embedded NATS server started", "client_url", s.ClientURL(), "monitor_url", s.MonitorURL(), "jetstream", true)
}
