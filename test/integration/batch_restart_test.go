package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// TestBatchSurvivesRestarts runs a batch through a worker SIGKILL (the
// built cmd/worker binary), a gateway restart (the gateway that drives the
// batch stops and a new one takes over) and a NATS server restart, all
// mid-run: the batch completes, and every custom_id is exactly once in the
// output and error files.
func TestBatchSurvivesRestarts(t *testing.T) {
	bin := relBuild(t, "cmd/worker")
	fake := newFake(t)
	fake.SetLatency(40 * time.Millisecond)
	const group = "restarts"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"ack_wait": relKillAckWait.Seconds()})
	ns := relStartNATS(t)
	env := relEnv(cfg, ns.URL())
	env.LogLevel = "info" // what became of each answer, should one go missing
	a := relStartGateway(t, env)
	doomed := relStartProc(t, bin, relWorkerVars(cfg, ns.URL(), 2))
	relStartWorker(t, env)

	const n = 400
	var lines, ids []string
	for i := range n {
		id := fmt.Sprintf("r-%03d", i)
		ids = append(ids, id)
		lines = append(lines, batchLine(id, group, id))
	}
	oa := openaiClient(a.URL, "")
	f := uploadBatch(t, oa, "restarts.jsonl", lines)
	b, err := oa.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	progress := func(oc openai.Client, atLeast int64) {
		t.Helper()
		ctx := relCtx(t, batchWait)
		for {
			bt, err := oc.Batches.Get(ctx, b.ID)
			if err == nil && bt.RequestCounts.Completed+bt.RequestCounts.Failed >= atLeast {
				t.Logf("batch %s: %+v", bt.Status, bt.RequestCounts)
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("the batch did not reach %d lines done: %v, %+v", atLeast, err, bt)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	progress(oa, 40)
	doomed.Kill(t)
	progress(oa, 80)
	if err := a.Stop(); err != nil {
		t.Fatalf("stop the first gateway: %v", err)
	}
	g2 := relStartGateway(t, env)
	ob := openaiClient(g2.URL, "")
	progress(ob, 140)
	ns.Stop()
	ns.Start()
	done := waitBatch(t, ob, b.ID, openai.BatchStatusCompleted, openai.BatchStatusFailed, openai.BatchStatusExpired)
	if done.Status != openai.BatchStatusCompleted {
		t.Fatalf("batch %s: %+v", done.Status, done.Errors)
	}
	out, errs := readResults(t, ob, done.OutputFileID), readResults(t, ob, done.ErrorFileID)
	checkExactlyOnce(t, ids, out, errs)
	if len(errs) != 0 {
		t.Errorf("%d lines failed, e.g. %+v", len(errs), errs[0])
	}
	if c := done.RequestCounts; c.Total != n || c.Completed+c.Failed != n {
		t.Errorf("request_counts %+v, want %d lines done", c, n)
	}
	calls := map[string]int{}
	for _, r := range fake.Requests() {
		calls[r.Content]++
	}
	var twice []string
	for _, id := range ids {
		if calls[id] == 0 {
			t.Errorf("line %s was never sent to the provider", id)
		}
		if calls[id] > 1 {
			twice = append(twice, id)
		}
	}
	t.Logf("%d of %d lines reached the provider more than once (a killed worker's calls, served again): %s", len(twice), n, strings.Join(twice, " "))
}
