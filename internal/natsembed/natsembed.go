// Package natsembed runs the NATS server with JetStream inside the gateway
// process, so that one command gives a working system. Clients in the same
// process connect through [Server.Connect] without TCP; other processes
// (workers, internal services) connect to the listen address.
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
		host, port, err := net.SplitHostPort(opts.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS listen address %q: %w", opts.Listen, err)
		}
		if !isLoopback(host) {
			return nil, fmt.Errorf("embedded NATS listen address %q: %w", opts.Listen, ErrNotLoopback)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS listen address %q: bad port", opts.Listen)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		so.Host, so.Port = host, p
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
	log.Info("embedded NATS server started", "client_url", s.ClientURL(), "jetstream", true)
}
