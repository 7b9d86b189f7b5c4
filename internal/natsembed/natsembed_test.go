package natsembed

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestMonitor checks that Options.Monitor serves the server's /varz, whose
// counters see a message published in this process, and that without it
// the server serves no monitoring endpoint.
func TestMonitor(t *testing.T) {
	s, err := Start(Options{StoreDir: t.TempDir(), Monitor: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if s.MonitorURL() == "" {
		t.Fatal("no monitor URL with Options.Monitor set")
	}
	nc, err := s.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(s.MonitorURL() + "/varz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v server.Varz
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v.InMsgs < 1 {
		t.Errorf("varz in_msgs = %d after a publish, want at least 1", v.InMsgs)
	}

	plain, err := Start(Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Shutdown()
	if u := plain.MonitorURL(); u != "" {
		t.Errorf("monitor URL %q without Options.Monitor", u)
	}
}

func TestMonitorRefusesNonLoopback(t *testing.T) {
	_, err := Start(Options{StoreDir: t.TempDir(), Monitor: "0.0.0.0:0"})
	if !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("Start with monitor 0.0.0.0:0: %v, want ErrNotLoopback", err)
	}
}
