package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// TestBatchGatewaySIGKILL kills, with SIGKILL, the gateway process (the
// built cmd/gateway) that drives a batch, while its lines are queued, served
// and answered (the batch's lines answer to a queue group that both
// gateways are in; the killed one is frozen just before, so it dies holding
// pickups and answers it was given).
// Its backlog is capped, so the driver queues the lines a few at a time:
// without a new driver the batch cannot go on. The second gateway takes the
// batch over because the first one's process is gone from NATS, not
// because its lease (15 s) ran out; the batch completes with every
// custom_id exactly once across the output and error files.
func TestBatchGatewaySIGKILL(t *testing.T) {
	bin := relBuild(t, "cmd/gateway")
	fake := newFake(t)
	fake.SetLatency(40 * time.Millisecond)
	const group = "gwkill"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"max_queued": 100})
	ns := relStartNATS(t)
	port := relFreePorts(t, 1)[0]
	doomed := relStartProc(t, bin, map[string]string{
		"LLMQ_CONFIG": cfg, "LLMQ_NATS_URL": ns.URL(), "LLMQ_LISTEN": "127.0.0.1:" + strconv.Itoa(port),
		"LLMQ_EMBEDDED_WORKERS": "0", "LLMQ_LOG_LEVEL": "info", "LLMQ_SHUTDOWN_TIMEOUT": "1s",
	})
	aURL := "http://127.0.0.1:" + strconv.Itoa(port)
	if !relPoll(relWait, func() bool {
		r, err := get(t.Context(), aURL+"/health/readiness", "")
		return err == nil && r.Status == http.StatusOK
	}) {
		t.Fatalf("the gateway process was not ready within %s", relWait)
	}
	env := relEnv(cfg, ns.URL())
	env.LogLevel = "info"
	workerLog := newLogLines()
	wenv := env
	wenv.WorkerSlots = 16 // many answers at once: the killed gateway dies holding some
	relStartWorker(t, wenv, workerLog)

	const n = 2000
	var lines, ids []string
	for i := range n {
		id := fmt.Sprintf("k-%03d", i)
		ids = append(ids, id)
		lines = append(lines, batchLine(id, group, id))
	}
	oa := openaiClient(aURL, "")
	f := uploadBatch(t, oa, "gwkill.jsonl", lines)
	b, err := oa.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	_, js := relJS(t, ns.URL())
	kv, err := js.KeyValue(waitCtx(t), relSubjects.BatchesBucket())
	if err != nil {
		t.Fatal(err)
	}
	// record is the part of the batch's stored record this test reads.
	type record struct {
		Batch     openai.Batch `json:"batch"`
		Published int          `json:"published"`
		Driver    string       `json:"driver"`
	}
	read := func(ctx context.Context) (record, error) {
		var r record
		e, err := kv.Get(ctx, b.ID)
		if err == nil {
			err = json.Unmarshal(e.Value(), &r)
		}
		return r, err
	}
	// waitFor waits, at most batchWait, until the stored record satisfies
	// cond, and returns it.
	waitFor := func(what string, cond func(record) bool) record {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), batchWait)
		defer cancel()
		for {
			r, err := read(ctx)
			if err == nil && cond(r) {
				return r
			}
			select {
			case <-ctx.Done():
				t.Fatalf("waiting for %s: the batch is %s, %d lines queued, %+v, driver %q (%v)", what, r.Batch.Status, r.Published, r.Batch.RequestCounts, r.Driver, err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	// Only the gateway process runs: it drives the batch.
	first := waitFor("lines done", func(r record) bool { return r.Driver != "" && r.Batch.RequestCounts.Completed >= 50 })
	// The second gateway joins: it answers half of the lines' pickups and
	// replies from now on, and asks after the first one's process every
	// tick, while the lease is the first one's. It must not take a batch
	// over from a driver that lives.
	g2log := newLogLines()
	g2 := relStartGateway(t, env, g2log)
	ob := openaiClient(g2.URL, "")
	mid := waitFor("lines done with two gateways", func(r record) bool { return r.Batch.RequestCounts.Completed >= 1000 })
	if mid.Driver != first.Driver || mid.Published >= n {
		t.Fatalf("before the kill: driver %q (first %q), %d of %d lines queued; the test wants the first driver with lines still to queue", mid.Driver, first.Driver, mid.Published, n)
	}
	// Frozen first (SIGSTOP: its connection stays open, so NATS goes on
	// handing it half of the lines' pickups and answers, which it holds),
	// until the other gateway has let 20 more lines reach the provider;
	// then killed, holding them.
	if err := doomed.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP: %v", err)
	}
	calls0 := fake.Count()
	if !relPoll(relWait, func() bool { return fake.Count() >= calls0+20 }) {
		t.Fatalf("with the first gateway frozen, %d lines reached the provider within %s, want 20", fake.Count()-calls0, relWait)
	}
	doomed.Kill(t)
	killed := time.Now()
	t.Logf("SIGKILL with %d lines queued, %d done", mid.Published, mid.Batch.RequestCounts.Completed)
	took := waitFor("another driver", func(r record) bool { return r.Driver != "" && r.Driver != first.Driver })
	t.Logf("taken over %s after the kill, at %d lines queued", time.Since(killed).Round(time.Millisecond), took.Published)
	g2log.waitFor(t, "taking the batch over", b.ID, "its process is gone from NATS")

	done := waitBatch(t, ob, b.ID, openai.BatchStatusCompleted, openai.BatchStatusFailed, openai.BatchStatusExpired)
	if done.Status != openai.BatchStatusCompleted {
		t.Fatalf("batch %s: %+v", done.Status, done.Errors)
	}
	out, errs := readResults(t, ob, done.OutputFileID), readResults(t, ob, done.ErrorFileID)
	checkExactlyOnce(t, ids, out, errs)
	for _, l := range out {
		if l.Response == nil || l.Response.StatusCode != http.StatusOK || l.Error != nil {
			t.Errorf("output line %s: %+v", l.CustomID, l)
		}
	}
	// The provider answers every call, and the batch neither expired nor
	// was cancelled: no line has a reason to fail.
	for _, l := range errs {
		switch {
		case l.Error != nil:
			t.Errorf("line %s never ran: %s: %s", l.CustomID, l.Error.Code, l.Error.Message)
		case l.Response != nil:
			t.Errorf("line %s failed: %d %s", l.CustomID, l.Response.StatusCode, l.Response.Body)
		default:
			t.Errorf("line %s is in the error file without a reason: %+v", l.CustomID, l)
		}
	}
	if c := done.RequestCounts; c.Total != n || c.Completed != int64(len(out)) || c.Failed != int64(len(errs)) {
		t.Errorf("request_counts %+v, but the files hold %d and %d lines of %d", c, len(out), len(errs), n)
	}

	// What the killed gateway held when it died: pickups it never answered
	// (the worker put their lines back in the queue; the other gateway
	// answered the next pickup) and answers it took and never confirmed
	// (the worker sent them again, to the other gateway). Either way the
	// line ended once, above. Timing decides how many there were.
	workerLog.mu.Lock()
	unanswered := 0
	for _, l := range workerLog.lines {
		if strings.Contains(l, "the caller did not answer the pickup") {
			unanswered++
		}
	}
	workerLog.mu.Unlock()
	calls := map[string]int{}
	for _, r := range fake.Requests() {
		calls[r.Content]++
	}
	twice := 0
	for _, id := range ids {
		if calls[id] > 1 {
			twice++
		}
	}
	t.Logf("pickups the killed gateway never answered: %d; lines that reached the provider more than once: %d", unanswered, twice)
	if unanswered == 0 {
		t.Error("no worker waited in vain for the killed gateway to answer a pickup: the test did not kill it holding work")
	}
}
