package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/pkg/messages"
)

// batchWait bounds the wait for a batch to end.
const batchWait = 60 * time.Second

// Keys of the batch tests' config.
const (
	batchMaster = "sk-llmq-batch-master"
	batchAlice  = "sk-llmq-batch-alice"
	batchBob    = "sk-llmq-batch-bob"
)

type batchLLMQ struct {
	Keys      []opsKey `yaml:"keys,omitempty"`
	MaxQueued int64    `yaml:"max_queued,omitempty"`
	Batches   any      `yaml:"batches,omitempty"`
}

type batchConfig struct {
	ModelList       []deployment     `yaml:"model_list"`
	GeneralSettings *generalSettings `yaml:"general_settings,omitempty"`
	LLMQ            *batchLLMQ       `yaml:"llmq_settings,omitempty"`
}

// batchConfigFile is a config with the master key and the keys alice and bob.
func batchConfigFile(t *testing.T, deployments ...deployment) string {
	t.Helper()
	return writeYAMLConfig(t, batchConfig{
		ModelList:       deployments,
		GeneralSettings: &generalSettings{MasterKey: batchMaster},
		LLMQ: &batchLLMQ{Keys: []opsKey{
			{Name: "alice", Key: batchAlice, MaxPriority: ptr(int64(3))},
			{Name: "bob", Key: batchBob},
		}},
	})
}

func openaiClient(url, key string) openai.Client {
	return openai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
}

// batchLine is one input line: a chat request for model with content.
func batchLine(customID, model, content string, extra ...string) string {
	return fmt.Sprintf(`{"custom_id":%q,"method":"POST","url":"/v1/chat/completions","body":%s}`, customID, chatBody(model, content, extra...))
}

func uploadBatch(t *testing.T, oc openai.Client, name string, lines []string) *openai.FileObject {
	t.Helper()
	f, err := oc.Files.New(waitCtx(t), openai.FileNewParams{
		File:    openai.File(strings.NewReader(strings.Join(lines, "\n")+"\n"), name, "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatalf("upload %s: %v", name, err)
	}
	return f
}

// waitBatch polls the batch until it is in one of the statuses.
func waitBatch(t *testing.T, oc openai.Client, id string, statuses ...openai.BatchStatus) *openai.Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), batchWait)
	defer cancel()
	for {
		b, err := oc.Batches.Get(ctx, id)
		if err != nil {
			t.Fatalf("get batch %s: %v", id, err)
		}
		if slices.Contains(statuses, b.Status) {
			return b
		}
		select {
		case <-ctx.Done():
			t.Fatalf("batch %s is %s with counts %+v, want one of %v", id, b.Status, b.RequestCounts, statuses)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// resultLine is a line of an output or error file.
type resultLine struct {
	ID       string `json:"id"`
	CustomID string `json:"custom_id"`
	Response *struct {
		StatusCode int             `json:"status_code"`
		RequestID  string          `json:"request_id"`
		Body       json.RawMessage `json:"body"`
	} `json:"response"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// readResults reads a result file; an empty id reads nothing.
func readResults(t *testing.T, oc openai.Client, id string) []resultLine {
	t.Helper()
	if id == "" {
		return nil
	}
	resp, err := oc.Files.Content(waitCtx(t), id)
	if err != nil {
		t.Fatalf("content of %s: %v", id, err)
	}
	defer resp.Body.Close()
	var out []resultLine
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l resultLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("file %s: line %q: %v", id, sc.Text(), err)
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", id, err)
	}
	return out
}

// checkExactlyOnce checks that the output and error files together hold
// every custom id of want exactly once.
func checkExactlyOnce(t *testing.T, want []string, files ...[]resultLine) {
	t.Helper()
	seen := map[string]int{}
	for _, f := range files {
		for _, l := range f {
			seen[l.CustomID]++
		}
	}
	for _, id := range want {
		if seen[id] != 1 {
			t.Errorf("custom_id %q appears %d times across the output and error files, want once", id, seen[id])
		}
		delete(seen, id)
	}
	for id, n := range seen {
		t.Errorf("custom_id %q (%d times) is not in the input", id, n)
	}
}

func statusOf(err error) int {
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		return apiErr.StatusCode
	}
	return 0
}

// TestBatchOpenAI runs the Batch API with openai-go as a user would: upload
// a file, create a batch, poll it to completed and read its output and
// error files; list and page; keys that may not see each other's files
// and batches; bad input files; delete.
func TestBatchOpenAI(t *testing.T) {
	fake := newFake(t)
	g := startEmbeddedGateway(t, batchConfigFile(t, fakeDeployment("assistant", "assistant-0", fake, 4)), 4)
	alice, bob, master := openaiClient(g.URL, batchAlice), openaiClient(g.URL, batchBob), openaiClient(g.URL, batchMaster)

	const n = 20
	var lines, ids []string
	for i := range n {
		id := fmt.Sprintf("req-%02d", i)
		ids = append(ids, id)
		// A priority in a line is llmq's field: it never reaches the provider.
		lines = append(lines, batchLine(id, "assistant", "line "+id, `"priority":0`))
	}
	f := uploadBatch(t, alice, "input.jsonl", lines)
	if f.Purpose != openai.FileObjectPurposeBatch || f.Filename != "input.jsonl" || f.Bytes <= 0 || !strings.HasPrefix(f.ID, "file-") {
		t.Fatalf("uploaded file %+v", f)
	}

	fake.FailNext(1, http.StatusBadRequest, "")
	b, err := alice.Batches.New(waitCtx(t), openai.BatchNewParams{
		InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h, Metadata: map[string]string{"job": "nightly"},
	})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	if b.Status != openai.BatchStatusValidating || b.InputFileID != f.ID || b.Metadata["job"] != "nightly" || b.ExpiresAt <= b.CreatedAt {
		t.Fatalf("created batch %+v", b)
	}
	done := waitBatch(t, alice, b.ID, openai.BatchStatusCompleted, openai.BatchStatusFailed)
	if done.Status != openai.BatchStatusCompleted {
		t.Fatalf("batch ended %s: %+v", done.Status, done.Errors)
	}
	if c := done.RequestCounts; c.Total != n || c.Completed != n-1 || c.Failed != 1 {
		t.Errorf("request_counts %+v, want total %d, completed %d, failed 1", c, n, n-1)
	}
	if done.InProgressAt == 0 || done.FinalizingAt == 0 || done.CompletedAt < done.InProgressAt {
		t.Errorf("timestamps in_progress %d finalizing %d completed %d", done.InProgressAt, done.FinalizingAt, done.CompletedAt)
	}
	out, errs := readResults(t, alice, done.OutputFileID), readResults(t, alice, done.ErrorFileID)
	checkExactlyOnce(t, ids, out, errs)
	for _, l := range out {
		var c chatCompletion
		if l.Response == nil || l.Response.StatusCode != 200 || json.Unmarshal(l.Response.Body, &c) != nil || len(c.Choices) == 0 || c.Choices[0].Message.Content != fakeReply {
			t.Errorf("output line %+v is not a served chat completion", l)
		}
		if l.Response != nil && l.Response.RequestID == "" {
			t.Errorf("output line %s has no request_id", l.CustomID)
		}
	}
	if len(errs) != 1 || errs[0].Response == nil || errs[0].Response.StatusCode != http.StatusBadRequest {
		t.Errorf("error file %+v, want one line answered 400", errs)
	}
	for _, r := range fake.Requests() {
		if bytes.Contains(r.Body, []byte(`"priority"`)) {
			t.Errorf("the provider got llmq's priority field: %s", r.Body)
		}
	}

	t.Run("keys see only their own", func(t *testing.T) {
		if _, err := bob.Batches.Get(waitCtx(t), b.ID); statusOf(err) != http.StatusNotFound {
			t.Errorf("bob reads alice's batch: %v, want 404", err)
		}
		if _, err := bob.Files.Get(waitCtx(t), f.ID); statusOf(err) != http.StatusNotFound {
			t.Errorf("bob reads alice's file: %v, want 404", err)
		}
		if _, err := bob.Files.Content(waitCtx(t), done.OutputFileID); statusOf(err) != http.StatusNotFound {
			t.Errorf("bob reads alice's output: %v, want 404", err)
		}
		if _, err := bob.Batches.Cancel(waitCtx(t), b.ID); statusOf(err) != http.StatusNotFound {
			t.Errorf("bob cancels alice's batch: %v, want 404", err)
		}
		if _, err := bob.Files.Delete(waitCtx(t), f.ID); statusOf(err) != http.StatusNotFound {
			t.Errorf("bob deletes alice's file: %v, want 404", err)
		}
		if _, err := bob.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
			CompletionWindow: openai.BatchNewParamsCompletionWindow24h}); statusOf(err) != http.StatusBadRequest {
			t.Errorf("bob runs alice's file: %v, want 400", err)
		}
		page, err := bob.Batches.List(waitCtx(t), openai.BatchListParams{})
		if err != nil || len(page.Data) != 0 {
			t.Errorf("bob's batches: %v, %+v; want none", err, page)
		}
		page, err = master.Batches.List(waitCtx(t), openai.BatchListParams{})
		if err != nil || len(page.Data) != 1 || page.Data[0].ID != b.ID {
			t.Errorf("the master key's batches: %v, %+v; want alice's", err, page)
		}
		if _, err := master.Files.Get(waitCtx(t), f.ID); err != nil {
			t.Errorf("the master key reads alice's file: %v", err)
		}
	})

	t.Run("list and page", func(t *testing.T) {
		second, err := alice.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
			CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
		if err != nil {
			t.Fatal(err)
		}
		waitBatch(t, alice, second.ID, openai.BatchStatusCompleted)
		page, err := alice.Batches.List(waitCtx(t), openai.BatchListParams{Limit: openai.Int(1)})
		if err != nil || len(page.Data) != 1 || !page.HasMore {
			t.Fatalf("first page: %v, %+v", err, page)
		}
		next, err := alice.Batches.List(waitCtx(t), openai.BatchListParams{Limit: openai.Int(1), After: openai.String(page.Data[0].ID)})
		if err != nil || len(next.Data) != 1 || next.HasMore || next.Data[0].ID == page.Data[0].ID {
			t.Fatalf("second page: %v, %+v", err, next)
		}
		var all []string
		pager := alice.Batches.ListAutoPaging(waitCtx(t), openai.BatchListParams{Limit: openai.Int(1)})
		for pager.Next() {
			all = append(all, pager.Current().ID)
		}
		if err := pager.Err(); err != nil {
			t.Fatalf("auto-paging: %v", err)
		}
		slices.Sort(all)
		want := []string{b.ID, second.ID}
		slices.Sort(want)
		if !slices.Equal(all, want) {
			t.Errorf("auto-paged batches %v, want %v", all, want)
		}
		files, err := alice.Files.List(waitCtx(t), openai.FileListParams{Purpose: openai.String("batch")})
		if err != nil || len(files.Data) != 1 || files.Data[0].ID != f.ID {
			t.Errorf("alice's batch files: %v, %+v", err, files)
		}
	})

	t.Run("bad lines", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			lines []string
			want  string
		}{
			{"not json", []string{batchLine("a", "assistant", "x"), "{not json"}, "line 2: the line is not valid JSON"},
			{"duplicate custom_id", []string{batchLine("a", "assistant", "x"), batchLine("b", "assistant", "x"), batchLine("a", "assistant", "y")}, `line 3: custom_id "a" is also used by line 1`},
			{"method", []string{strings.Replace(batchLine("a", "assistant", "x"), `"POST"`, `"GET"`, 1)}, `line 1: method must be "POST"`},
			{"two urls", []string{batchLine("a", "assistant", "x"), `{"custom_id":"b","method":"POST","url":"/v1/completions","body":` + completionBody("assistant", "x") + `}`}, "line 2: url is \"/v1/completions\" but line 1 has"},
			{"body not an object", []string{`{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":[1]}`}, "line 1: body must be a JSON object"},
			{"no custom_id", []string{`{"method":"POST","url":"/v1/chat/completions","body":{"model":"assistant"}}`}, "line 1: custom_id must be a non-empty string"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := alice.Files.New(waitCtx(t), openai.FileNewParams{
					File:    openai.File(strings.NewReader(strings.Join(tc.lines, "\n")), "bad.jsonl", "application/jsonl"),
					Purpose: openai.FilePurposeBatch,
				})
				var apiErr *openai.Error
				if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Message, tc.want) {
					t.Fatalf("upload: %v, want 400 with %q", err, tc.want)
				}
			})
		}
		files, err := alice.Files.List(waitCtx(t), openai.FileListParams{Purpose: openai.String("batch")})
		if err != nil || len(files.Data) != 1 {
			t.Errorf("a refused upload left a file: %v, %+v", err, files)
		}
	})

	t.Run("unknown model fails the batch", func(t *testing.T) {
		bad := uploadBatch(t, alice, "unknown.jsonl", []string{batchLine("a", "assistant", "x"), batchLine("b", "no-such-group", "x")})
		bt, err := alice.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: bad.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
			CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
		if err != nil {
			t.Fatal(err)
		}
		failed := waitBatch(t, alice, bt.ID, openai.BatchStatusFailed, openai.BatchStatusCompleted)
		if failed.Status != openai.BatchStatusFailed || len(failed.Errors.Data) != 1 || failed.Errors.Data[0].Line != 2 || failed.Errors.Data[0].Code != "model_not_found" {
			t.Fatalf("batch %s with errors %+v, want failed on line 2", failed.Status, failed.Errors)
		}
	})

	t.Run("delete", func(t *testing.T) {
		del, err := alice.Files.Delete(waitCtx(t), done.OutputFileID)
		if err != nil || !del.Deleted || del.ID != done.OutputFileID {
			t.Fatalf("delete: %v, %+v", err, del)
		}
		if _, err := alice.Files.Get(waitCtx(t), done.OutputFileID); statusOf(err) != http.StatusNotFound {
			t.Errorf("a deleted file: %v, want 404", err)
		}
	})
}

// TestBatchCancel cancels a batch while two lines are at the provider: no
// new line starts, the two finish and are in the output, the rest end as
// batch_cancelled in the error file.
func TestBatchCancel(t *testing.T) {
	fake := newFake(t)
	g := startEmbeddedGateway(t, batchConfigFile(t, fakeDeployment("assistant", "assistant-0", fake, 2)), 4)
	alice := openaiClient(g.URL, batchAlice)
	var lines, ids []string
	for i := range 10 {
		id := fmt.Sprintf("c-%d", i)
		ids = append(ids, id)
		lines = append(lines, batchLine(id, "assistant", id))
	}
	f := uploadBatch(t, alice, "cancel.jsonl", lines)
	fake.Hold()
	// Alice asks for priority 0; her key's max_priority is 3.
	b, err := alice.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h}, option.WithJSONSet("priority", 0))
	if err != nil {
		t.Fatal(err)
	}
	waitUpstream(t, fake, 2)

	// The queue status shows the batch, at the priority alice may use,
	// once the driver has queued every line.
	type queueStatus struct {
		Batches []struct {
			ID       string `json:"id"`
			Status   string `json:"status"`
			Band     int    `json:"band"`
			Priority int64  `json:"priority"`
			Total    int    `json:"total"`
		} `json:"batches"`
		Queues []struct {
			Band  int    `json:"band"`
			Group string `json:"group"`
			Depth uint64 `json:"depth"`
		} `json:"queues"`
	}
	var st queueStatus
	for ctx := waitCtx(t); ; {
		st = queueStatus{}
		if err := json.Unmarshal(mustGet(t, g.URL+"/v1/queue", batchMaster).Body, &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Queues) == 1 && st.Queues[0].Depth == 10 || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(st.Batches) != 1 || st.Batches[0].ID != b.ID || st.Batches[0].Status != "in_progress" || st.Batches[0].Priority != 3 || st.Batches[0].Band != bandOf(3) || st.Batches[0].Total != 10 {
		t.Errorf("queue status batches %+v, want alice's batch in progress at priority 3", st.Batches)
	}
	if len(st.Queues) != 1 || st.Queues[0].Band != bandOf(3) || st.Queues[0].Group != "assistant" || st.Queues[0].Depth != 10 {
		t.Errorf("queue status queues %+v, want the 10 lines in band %d", st.Queues, bandOf(3))
	}
	if _, err := alice.Files.Delete(waitCtx(t), f.ID); statusOf(err) != http.StatusConflict {
		t.Errorf("deleting the input of a running batch: %v, want 409", err)
	}

	c, err := alice.Batches.Cancel(waitCtx(t), b.ID)
	if err != nil || c.Status != openai.BatchStatusCancelling || c.CancellingAt == 0 {
		t.Fatalf("cancel: %v, %+v", err, c)
	}
	fake.Release()
	done := waitBatch(t, alice, b.ID, openai.BatchStatusCancelled)
	out, errs := readResults(t, alice, done.OutputFileID), readResults(t, alice, done.ErrorFileID)
	checkExactlyOnce(t, ids, out, errs)
	if len(out) != 2 || fake.Count() != 2 {
		t.Errorf("%d lines served, the provider got %d; want the 2 in flight at the cancel", len(out), fake.Count())
	}
	for _, l := range errs {
		if l.Error == nil || l.Error.Code != "batch_cancelled" || l.Response != nil {
			t.Errorf("error line %+v, want batch_cancelled", l)
		}
	}
	if c := done.RequestCounts; c.Total != 10 || c.Completed != 2 || c.Failed != 8 || done.CancelledAt == 0 {
		t.Errorf("request_counts %+v cancelled_at %d", c, done.CancelledAt)
	}
	if _, err := alice.Batches.Cancel(waitCtx(t), b.ID); err != nil {
		t.Errorf("cancelling a cancelled batch again: %v", err)
	}
	for _, m := range []struct {
		name, label string
		want        float64
	}{
		{"llmq_batch_lines_total", `outcome="served"`, 2},
		{"llmq_batch_lines_total", `outcome="batch_cancelled"`, 8},
		{"llmq_batches_ended_total", `status="cancelled"`, 1},
		{"llmq_batches", `status="cancelling"`, 0},
	} {
		if got := relMetric(t, g.URL+"/metrics", m.name, m.label); got != m.want {
			t.Errorf("%s{%s} = %v, want %v", m.name, m.label, got, m.want)
		}
	}
}

// TestBatchExpiry runs a batch with a short completion window whose lines
// for one group cannot run: the lines that ran are in the output, the rest
// end as batch_expired.
func TestBatchExpiry(t *testing.T) {
	fast, slow := newFake(t), newFake(t)
	g := startEmbeddedGateway(t, batchConfigFile(t,
		fakeDeployment("fast", "fast-0", fast, 0), fakeDeployment("slow", "slow-0", slow, 1)), 4)
	alice := openaiClient(g.URL, batchAlice)
	slow.Hold()
	lines := []string{batchLine("f-0", "fast", "x"), batchLine("s-0", "slow", "x"), batchLine("s-1", "slow", "x"), batchLine("f-1", "fast", "y"), batchLine("s-2", "slow", "x")}
	f := uploadBatch(t, alice, "expiry.jsonl", lines)
	b, err := alice.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: "4s"})
	if err != nil {
		t.Fatal(err)
	}
	done := waitBatch(t, alice, b.ID, openai.BatchStatusExpired, openai.BatchStatusCompleted, openai.BatchStatusFailed)
	if done.Status != openai.BatchStatusExpired || done.ExpiredAt == 0 {
		t.Fatalf("batch %s, want expired", done.Status)
	}
	out, errs := readResults(t, alice, done.OutputFileID), readResults(t, alice, done.ErrorFileID)
	checkExactlyOnce(t, []string{"f-0", "s-0", "s-1", "f-1", "s-2"}, out, errs)
	var served []string
	for _, l := range out {
		served = append(served, l.CustomID)
	}
	slices.Sort(served)
	if !slices.Equal(served, []string{"f-0", "f-1"}) {
		t.Errorf("served %v, want the fast lines", served)
	}
	for _, l := range errs {
		if l.Error == nil || l.Error.Code != "batch_expired" {
			t.Errorf("error line %+v, want batch_expired", l)
		}
	}
}

// TestBatchFullQueue runs a batch of more lines than its band and group may
// hold (max_queued): the driver queues what fits, waits while the queue is
// full, and the batch completes with every line once.
func TestBatchFullQueue(t *testing.T) {
	fake := newFake(t)
	cfg := writeYAMLConfig(t, batchConfig{
		ModelList: []deployment{fakeDeployment("assistant", "assistant-0", fake, 1)},
		LLMQ:      &batchLLMQ{MaxQueued: 3, Batches: map[string]any{"max_file_lines": 12}},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	oc := openaiClient(g.URL, "")
	var lines, ids []string
	for i := range 12 {
		id := fmt.Sprintf("q-%02d", i)
		ids = append(ids, id)
		lines = append(lines, batchLine(id, "assistant", id))
	}
	f := uploadBatch(t, oc, "full.jsonl", lines)
	b, err := oc.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	done := waitBatch(t, oc, b.ID, openai.BatchStatusCompleted, openai.BatchStatusFailed, openai.BatchStatusExpired)
	if done.Status != openai.BatchStatusCompleted || done.RequestCounts.Completed != 12 {
		t.Fatalf("batch %s %+v", done.Status, done.RequestCounts)
	}
	checkExactlyOnce(t, ids, readResults(t, oc, done.OutputFileID), readResults(t, oc, done.ErrorFileID))
	if fake.MaxInFlight() > 1 || fake.Count() != 12 {
		t.Errorf("the provider got %d calls, at most %d at once; want 12, one at a time", fake.Count(), fake.MaxInFlight())
	}

	// The limit of lines is the config's.
	_, err = oc.Files.New(waitCtx(t), openai.FileNewParams{
		File:    openai.File(strings.NewReader(strings.Join(append(lines, batchLine("q-12", "assistant", "x")), "\n")), "long.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Message, "line 13: a batch file may have at most 12 lines") {
		t.Errorf("a 13-line file with max_file_lines 12: %v", err)
	}
}

// TestBatchTenant: a batch's lines are its creator's tenant's requests (they
// share their band with that tenant's other requests); a trusted key may
// name the tenant at creation, any other key may not.
func TestBatchTenant(t *testing.T) {
	natsURL := startNATS(t)
	fake := newFake(t)
	cfg := writeYAMLConfig(t, map[string]any{
		"model_list":       []deployment{fakeDeployment("assistant", "assistant-0", fake, 0)},
		"general_settings": map[string]any{"master_key": batchMaster},
		"llmq_settings": map[string]any{"keys": []map[string]any{
			{"name": "alice", "key": batchAlice},
			{"name": "svc", "key": batchBob, "trusted": true},
		}},
	})
	env := baseEnv(cfg)
	env.NATSURL = natsURL
	g := startGateway(t, env) // no worker: the lines stay queued
	create := func(key, tenant string) error {
		opts := []option.RequestOption{}
		if tenant != "" {
			opts = append(opts, option.WithHeader("x-llmq-tenant", tenant))
		}
		oc := openaiClient(g.URL, key)
		f := uploadBatch(t, oc, "t.jsonl", []string{batchLine("c-"+key, "assistant", "x")})
		_, err := oc.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
			CompletionWindow: openai.BatchNewParamsCompletionWindow24h}, opts...)
		return err
	}
	if err := create(batchAlice, ""); err != nil {
		t.Fatal(err)
	}
	if err := create(batchBob, "acme"); err != nil {
		t.Fatal(err)
	}
	var apiErr *openai.Error
	if err := create(batchAlice, "acme"); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusForbidden {
		t.Errorf("alice (not trusted) naming a tenant: %v, want 403", err)
	}

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(waitCtx(t), "LLMQ_REQUESTS")
	if err != nil {
		t.Fatal(err)
	}
	var tenants []string
	limPoll(t, func() bool {
		info, err := stream.Info(waitCtx(t))
		return err == nil && info.State.Msgs == 2
	})
	info, _ := stream.Info(waitCtx(t))
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		if m, err := stream.GetMsg(waitCtx(t), seq); err == nil {
			tenants = append(tenants, m.Header.Get(messages.HeaderTenant))
		}
	}
	slices.Sort(tenants)
	if !slices.Equal(tenants, []string{"acme", "alice"}) {
		t.Errorf("the queued lines are for tenants %q, want acme (named by the trusted key) and alice (the key's own)", tenants)
	}
}
