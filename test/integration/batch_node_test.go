package integration

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBatchOpenAINodeClient runs test/openai-node/batch.test.mjs: the
// official OpenAI Node client (npm "openai", installed into
// test/openai-node/node_modules by scripts/install-browser-test-deps)
// uploads a file, creates a batch, polls it to completed and reads the
// output, is refused another key's batch, cancels a batch, lists and
// deletes, unchanged.
func TestBatchOpenAINodeClient(t *testing.T) {
	const hint = "; run scripts/install-browser-test-deps (scripts/test does)"
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not on PATH" + hint)
	}
	if _, err := os.Stat("../openai-node/node_modules/openai/package.json"); err != nil {
		t.Fatal("npm's openai is not installed in test/openai-node/node_modules" + hint)
	}
	fast, slow := newFake(t), newFake(t)
	slow.SetLatency(time.Second)
	g := startEmbeddedGateway(t, batchConfigFile(t,
		fakeDeployment("assistant", "assistant-0", fast, 0), fakeDeployment("slow", "slow-0", slow, 1)), 4)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "batch.test.mjs", g.URL, batchAlice, batchBob, "assistant", "slow")
	cmd.Dir = "../openai-node"
	out, err := cmd.CombinedOutput()
	t.Logf("node batch.test.mjs:\n%s", out)
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "PASS") {
		t.Fatalf("the Node client's run failed: %v", err)
	}
}
