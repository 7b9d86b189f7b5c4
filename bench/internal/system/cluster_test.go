package system

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/jsretry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// nodeEnv, when set, makes the test binary run one cluster node instead of
// the tests (StartCluster's NodeCommand re-executes the test binary).
const nodeEnv = "LLMQBENCH_TEST_NATS_NODE"

func TestMain(m *testing.M) {
	if os.Getenv(nodeEnv) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		err := RunNode(ctx, os.Args[1:], os.Stdin, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testNode(args []string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), nodeEnv+"=1")
	return cmd
}

// TestCluster starts a cluster, stores a message in a stream with 3
// replicas and stops the nodes.
func TestCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	c, err := StartCluster(ctx, testNode, t.TempDir(), t.Output())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster ready in %s: %s", time.Since(start), c.URL)
	defer func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	nc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// A ready cluster may still move its meta leader, losing a request or
	// answering "not available": repeat as llmq's own processes do.
	var s jetstream.Stream
	if _, err := jsretry.Do(ctx, func(ctx context.Context) (err error) {
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("stream created after %s", time.Since(start))
	msg := nats.NewMsg("t.x")
	msg.Data = []byte("x")
	msg.Header.Set(jetstream.MsgIDHeader, "x")
	if _, _, err := jsretry.Publish(ctx, js, msg); err != nil {
		t.Fatal(err)
	}
	var info *jetstream.StreamInfo
	if _, err := jsretry.Do(ctx, func(ctx context.Context) (err error) {
		info, err = s.Info(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := len(info.Cluster.Replicas) + 1; got != 3 || info.State.Msgs != 1 {
		t.Fatalf("stream has %d replicas and %d messages, want 3 and 1", got, info.State.Msgs)
	}
	if len(c.Procs()) != 3 {
		t.Fatalf("%d processes", len(c.Procs()))
	}
}

// TestClusterNodeFails checks that StartCluster reports a node that exits
// before it is ready (here: refused arguments), and stops the others.
func TestClusterNodeFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bad := func(args []string) *exec.Cmd { return testNode(append(args, "unexpected")) }
	c, err := StartCluster(ctx, bad, t.TempDir(), t.Output())
	if err == nil {
		_ = c.Close()
		t.Fatal("StartCluster with failing nodes succeeded")
	}
	if !strings.Contains(err.Error(), "exited before it was ready") {
		t.Errorf("error %q does not say the node exited", err)
	}
}
