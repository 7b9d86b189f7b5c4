package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/ctl"
	"github.com/llmq/llmq/internal/deadletter"
	"github.com/llmq/llmq/pkg/messages"
)

// llmqctl runs the admin command with env and returns what it printed.
func llmqctl(t *testing.T, env config.Env, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 2*waitLimit)
	defer cancel()
	err := ctl.Run(ctx, args, env, noEnv, &out, newTestLog(t))
	t.Logf("llmqctl %s:\n%s(error: %v)", strings.Join(args, " "), out.String(), err)
	return out.String(), err
}

// mustCtl runs llmqctl and fails the test if it fails.
func mustCtl(t *testing.T, env config.Env, args ...string) string {
	t.Helper()
	out, err := llmqctl(t, env, args...)
	if err != nil {
		t.Fatalf("llmqctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// ctlEnv is llmqctl's environment for an installation on natsURL.
func ctlEnv(cfgPath, natsURL string) config.Env {
	env := baseEnv(cfgPath)
	env.NATSURL = natsURL
	return env
}

// tableRow reports whether out has a line whose whitespace-separated fields
// begin with fields.
func tableRow(out string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(fields) && slicesEqual(f[:len(fields)], fields) {
			return true
		}
	}
	return false
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestCtlStatus: llmqctl status shows the same requests per band and group
// as GET /v1/queue, the deployments' use of their limits, and the batches
// that are not over with their progress.
func TestCtlStatus(t *testing.T) {
	const master = "sk-master-ctl"
	natsURL := startNATS(t)
	fake := newFake(t)
	cfg := writeConfig(t, configFile{
		ModelList: []deployment{
			fakeDeployment("alpha", "alpha-0", fake, 2),
			fakeDeployment("beta", "beta-0", fake, 0),
		},
		GeneralSettings: &generalSettings{MasterKey: master},
	})
	env := baseEnv(cfg)
	env.NATSURL = natsURL
	g := startGateway(t, env) // no workers: the requests stay queued
	q := observeQueue(t, natsURL)

	out := mustCtl(t, ctlEnv(cfg, natsURL), "status")
	if !strings.Contains(out, "Queue LLMQ_REQUESTS: 0 requests") || !strings.Contains(out, "Dead letters: 0") || !strings.Contains(out, "Batches: 0 not over") {
		t.Errorf("status of an empty queue:\n%s", out)
	}

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i, r := range []struct {
		group    string
		priority int
	}{{"alpha", 0}, {"alpha", 0}, {"alpha", 9}, {"beta", 9}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = post(ctx, g.URL+"/v1/chat/completions", master, chatBody(r.group, "status "+strconv.Itoa(i), `"priority":`+strconv.Itoa(r.priority)))
		}()
	}
	q.waitStored(t, 4)

	out = mustCtl(t, ctlEnv(cfg, natsURL), "status")
	var st queueStatus
	r := mustGet(t, g.URL+"/v1/queue", master)
	if err := json.Unmarshal(r.Body, &st); err != nil {
		t.Fatalf("GET /v1/queue: %v: %s", err, r.Body)
	}
	if len(st.Queues) != 3 || st.Total != 4 {
		t.Fatalf("GET /v1/queue shows %s, want 4 requests in 3 queues", r.Body)
	}
	if !strings.Contains(out, "Queue LLMQ_REQUESTS: 4 requests") {
		t.Errorf("status does not count 4 requests:\n%s", out)
	}
	for _, q := range st.Queues {
		if !tableRow(out, strconv.Itoa(q.Band), q.Group, strconv.FormatUint(q.Depth, 10)) {
			t.Errorf("status lacks the row band %d, group %s, %d requests (as in /v1/queue):\n%s", q.Band, q.Group, q.Depth, out)
		}
		// Sent with the master key: its tenant, "master", holds them all.
		if !strings.Contains(out, "master "+strconv.FormatUint(q.Depth, 10)) {
			t.Errorf("status does not say the tenant master holds the %d requests of band %d, %s:\n%s", q.Depth, q.Band, q.Group, out)
		}
	}
	if !tableRow(out, "alpha-0", "alpha", "0/2", "0/-", "0/-", "-") || !tableRow(out, "beta-0", "beta", "0/-") {
		t.Errorf("status does not show the deployments' limits:\n%s", out)
	}

	// A batch of 3 lines at priority 5, queued and waiting: it shows with
	// its band, progress and tenant, as in GET /v1/queue.
	oc := openaiClient(g.URL, master)
	var lines []string
	for i := range 3 {
		lines = append(lines, batchLine("ctl-"+strconv.Itoa(i), "beta", "batch line "+strconv.Itoa(i)))
	}
	f := uploadBatch(t, oc, "ctl.jsonl", lines)
	b, err := oc.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h}, option.WithJSONSet("priority", 5))
	if err != nil {
		t.Fatal(err)
	}
	q.waitStored(t, 4+3) // every line queued: the batch is in progress
	out = mustCtl(t, ctlEnv(cfg, natsURL), "status")
	st = queueStatus{}
	if err := json.Unmarshal(mustGet(t, g.URL+"/v1/queue", master).Body, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Batches) != 1 || st.Batches[0].ID != b.ID || st.Batches[0].Status != "in_progress" || st.Batches[0].Band != bandOf(5) || st.Batches[0].Total != 3 || st.Batches[0].Tenant != "master" {
		t.Fatalf("GET /v1/queue shows the batches %+v, want %s in progress in band %d with 3 lines for tenant master", st.Batches, b.ID, bandOf(5))
	}
	if !strings.Contains(out, "Batches: 1 not over") || !tableRow(out, b.ID, "in_progress", strconv.Itoa(bandOf(5)), "0", "0", "3", "master") {
		t.Errorf("status lacks the row of batch %s (in_progress, band %d, 0 completed, 0 failed of 3, tenant master):\n%s", b.ID, bandOf(5), out)
	}

	// Cancelled, it is over (no line started), and no longer shows.
	if _, err := oc.Batches.Cancel(waitCtx(t), b.ID); err != nil {
		t.Fatal(err)
	}
	waitBatch(t, oc, b.ID, openai.BatchStatusCancelled)
	if out := mustCtl(t, ctlEnv(cfg, natsURL), "status"); !strings.Contains(out, "Batches: 0 not over") || strings.Contains(out, b.ID) {
		t.Errorf("status still shows the cancelled batch %s:\n%s", b.ID, out)
	}
	if n := fake.Count(); n != 0 {
		t.Errorf("the upstream received %d requests without any worker", n)
	}
}

// wakeSniffer records the wake-up hints the request stream republishes for
// every stored request (headers only): their subject and headers.
type wakeSniffer struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func sniffWakes(t *testing.T, natsURL string) *wakeSniffer {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Name("llmq-ctl-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w := &wakeSniffer{}
	if _, err := nc.Subscribe("llmq.wake.>", func(m *nats.Msg) {
		if m.Header.Get(messages.HeaderRequestID) == "" {
			return // a worker's bare hint after a nak
		}
		w.mu.Lock()
		w.msgs = append(w.msgs, m)
		w.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return w
}

// find returns the stored request with body content, or nil.
func (w *wakeSniffer) find(requestID string) *nats.Msg {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.msgs {
		if m.Header.Get(messages.HeaderRequestID) == requestID {
			return m
		}
	}
	return nil
}

var replayedAs = regexp.MustCompile(`dead letter (\d+) \(band (\d+), group (\S+)\) replayed as request (\S+): (.*)`)

// TestCtlDeadLetters drives every dead-letter verb against an embedded NATS
// and a gateway with in-process workers: requests that failed for good are
// listed with their reason and age, shown whole, replayed (served by a
// worker, at their band and group, with a new id and a fresh deadline, and
// removed), replayed and failed again (dead-lettered anew), and purged.
func TestCtlDeadLetters(t *testing.T) {
	fake := newFake(t)
	cfg := relWriteConfig(t, relConfig{
		ModelList:      []deployment{fakeDeployment("alpha", "alpha-0", fake, 0)},
		RouterSettings: map[string]any{"num_retries": 0, "allowed_fails": 1000},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	env := ctlEnv(cfg, g.NATSURL())
	_, js := relJS(t, g.NATSURL())
	wakes := sniffWakes(t, g.NATSURL())

	out := mustCtl(t, env, "dead", "list")
	if !strings.Contains(out, "Dead letters in LLMQ_DEAD: 0") {
		t.Errorf("dead list of an empty stream:\n%s", out)
	}

	// Two requests that fail for good (the provider answers 500), in two
	// bands, and one undecodable message.
	fake.FailNext(2, http.StatusInternalServerError, "")
	for i, p := range []int{0, 9} {
		checkError(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("alpha", "dead-"+strconv.Itoa(i), `"priority":`+strconv.Itoa(p))), http.StatusBadGateway, "")
		relWaitStreamMsgs(t, js, relDeadStream, uint64(i+1))
	}
	if _, err := js.PublishMsg(relCtx(t, relWait), relPoisonMsg(relSubjects.Request(0, "alpha"), map[string]string{messages.HeaderVersion: messages.Version}, "not JSON")); err != nil {
		t.Fatal(err)
	}
	relWaitStreamMsgs(t, js, relDeadStream, 3)
	dead := relDeadLetters(t, js)
	if got := fake.Count(); got != 2 {
		t.Fatalf("the upstream received %d requests, want 2", got)
	}
	origID := dead[0].Header.Get(messages.HeaderRequestID)

	// list: id, age, band, group, request id, reason.
	out = mustCtl(t, env, "dead", "list")
	if !strings.Contains(out, "Dead letters in LLMQ_DEAD: 3") {
		t.Errorf("dead list does not count 3:\n%s", out)
	}
	for i, d := range dead {
		band, group, _ := relSubjects.ParseRequest(d.Subject)
		row := []string{strconv.FormatUint(d.Sequence, 10)}
		lineOK := false
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 5 || f[0] != row[0] {
				continue
			}
			lineOK = f[2] == strconv.Itoa(band) && f[3] == group && regexp.MustCompile(`^\d`).MatchString(f[1])
			if i < 2 {
				lineOK = lineOK && f[4] == d.Header.Get(messages.HeaderRequestID) && strings.Contains(line, "provider_error")
			} else {
				lineOK = lineOK && strings.Contains(line, messages.HeaderRequestID+" is missing")
			}
		}
		if !lineOK {
			t.Errorf("dead list has no right row for letter %d (band %d, %s):\n%s", d.Sequence, band, d.Header.Get(messages.HeaderDeadReason), out)
		}
	}
	out = mustCtl(t, env, "dead", "list", "--limit", "2")
	if !strings.Contains(out, "more follow: llmqctl dead list --from 3") {
		t.Errorf("dead list --limit 2 does not say where to go on:\n%s", out)
	}

	// show: headers and body size, the body only when asked for.
	out = mustCtl(t, env, "dead", "show", "1")
	for _, want := range []string{"ID:         1", "Reason:     provider_error", "Body:       " + strconv.Itoa(len(dead[0].Data)) + " bytes",
		messages.HeaderRequestID + ": " + origID, messages.HeaderReply + ": ", "Replayable: yes"} {
		if !strings.Contains(out, want) {
			t.Errorf("dead show 1 lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "dead-0") {
		t.Errorf("dead show printed the body without --body:\n%s", out)
	}
	if out := mustCtl(t, env, "dead", "show", "1", "--body"); !strings.Contains(out, "dead-0") {
		t.Errorf("dead show --body does not print the body:\n%s", out)
	}
	if out := mustCtl(t, env, "dead", "show", "3"); !strings.Contains(out, "Replayable: no") {
		t.Errorf("dead show of an undecodable letter does not say it cannot be replayed:\n%s", out)
	}

	// Unknown and bad ids, unreplayable letters: clear errors, nothing changes.
	for _, args := range [][]string{{"dead", "show", "99"}, {"dead", "replay", "1", "99"}, {"dead", "purge", "99"}} {
		if _, err := llmqctl(t, env, args...); !errors.Is(err, deadletter.ErrNotFound) || !strings.Contains(err.Error(), "99") {
			t.Errorf("llmqctl %s: error %v, want one naming the unknown dead letter 99", strings.Join(args, " "), err)
		}
	}
	if _, err := llmqctl(t, env, "dead", "replay", "3"); err == nil || !strings.Contains(err.Error(), "cannot be replayed") {
		t.Errorf("replaying an undecodable letter: error %v, want it cannot be replayed", err)
	}
	for _, args := range [][]string{{"dead", "show", "x"}, {"dead", "purge"}, {"dead", "purge", "--all", "1"}, {"dead", "replay"}, {"dead", "frob"}, {"frob"}} {
		if _, err := llmqctl(t, env, args...); !errors.Is(err, ctl.ErrUsage) && !strings.Contains(err.Error(), "dead letter id") {
			t.Errorf("llmqctl %s: error %v, want a usage error", strings.Join(args, " "), err)
		}
	}
	relWaitStreamMsgs(t, js, relDeadStream, 3)
	if got := fake.Count(); got != 2 {
		t.Fatalf("failed commands reached the upstream: %d requests", got)
	}

	// replay: both served by a worker, at their own band and group, each
	// with a new id (so a new Nats-Msg-Id) and a fresh deadline; removed.
	start := time.Now()
	out = mustCtl(t, env, "dead", "replay", "1", "2")
	matches := replayedAs.FindAllStringSubmatch(out, -1)
	if len(matches) != 2 {
		t.Fatalf("dead replay 1 2 printed:\n%s", out)
	}
	for i, m := range matches {
		band, _, _ := relSubjects.ParseRequest(dead[i].Subject)
		if m[1] != strconv.FormatUint(dead[i].Sequence, 10) || m[2] != strconv.Itoa(band) || m[3] != "alpha" ||
			!strings.HasPrefix(m[5], "served by alpha-0") || !strings.HasSuffix(m[5], "dead letter "+m[1]+" removed") {
			t.Errorf("replay line %q", m[0])
		}
		newID := m[4]
		if newID == dead[i].Header.Get(messages.HeaderRequestID) {
			t.Errorf("letter %s was replayed with its old request id", m[1])
		}
		w := wakes.find(newID)
		if w == nil {
			t.Errorf("no stored request with the replayed id %s", newID)
			continue
		}
		if w.Subject != relSubjects.Wake(band, "alpha") {
			t.Errorf("replayed letter %s was stored on %s, want band %d", m[1], w.Subject, band)
		}
		if got := w.Header.Get(messages.HeaderMsgID); got != newID {
			t.Errorf("replayed letter %s has Nats-Msg-Id %q, want %q", m[1], got, newID)
		}
		ms, _ := strconv.ParseInt(w.Header.Get(messages.HeaderDeadline), 10, 64)
		if dl := time.UnixMilli(ms); dl.Before(start) {
			t.Errorf("replayed letter %s has the deadline %v, before the replay began", m[1], dl)
		}
	}
	if got := contents(fake); len(got) != 4 || got[2]+got[3] != "dead-0dead-1" && got[2]+got[3] != "dead-1dead-0" {
		t.Errorf("the upstream received %q, want the two failed requests, then both again", got)
	}
	relWaitStreamMsgs(t, js, relDeadStream, 1)
	if out := mustCtl(t, env, "dead", "list"); !tableRow(out, "3") || tableRow(out, "1") || tableRow(out, "2") {
		t.Errorf("after the replay dead list shows:\n%s", out)
	}

	// A replay that fails again: reported, the old letter removed, a new
	// one (the new request's) in its place.
	fake.FailNext(1, http.StatusInternalServerError, "")
	checkError(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("alpha", "dead-again")), http.StatusBadGateway, "")
	relWaitStreamMsgs(t, js, relDeadStream, 2)
	again := relDeadLetters(t, js)[1]
	fake.FailNext(1, http.StatusInternalServerError, "")
	out, err := llmqctl(t, env, "dead", "replay", strconv.FormatUint(again.Sequence, 10))
	if err == nil || !strings.Contains(out, "provider_error") || !strings.Contains(out, "it is a new dead letter") {
		t.Errorf("a replay that fails again: error %v, output:\n%s", err, out)
	}
	relWaitStreamMsgs(t, js, relDeadStream, 2)
	last := relDeadLetters(t, js)[1]
	if last.Sequence == again.Sequence || !strings.Contains(string(last.Data), "dead-again") ||
		last.Header.Get(messages.HeaderRequestID) == again.Header.Get(messages.HeaderRequestID) {
		t.Errorf("after a failed replay the newest letter is %d %q (request %s); want a new letter of the replay",
			last.Sequence, last.Data, last.Header.Get(messages.HeaderRequestID))
	}

	// purge by id, then all.
	if out := mustCtl(t, env, "dead", "purge", "3"); !strings.Contains(out, "removed 1 dead letters") {
		t.Errorf("dead purge 3 printed:\n%s", out)
	}
	relWaitStreamMsgs(t, js, relDeadStream, 1)
	if out := mustCtl(t, env, "dead", "purge", "--all"); !strings.Contains(out, "removed 1 dead letters") {
		t.Errorf("dead purge --all printed:\n%s", out)
	}
	relWaitStreamMsgs(t, js, relDeadStream, 0)
	if out := mustCtl(t, env, "status"); !strings.Contains(out, "Dead letters: 0") {
		t.Errorf("status after the purge:\n%s", out)
	}
}

// TestCtlConnectErrors: a NATS URL that does not answer, an address that
// accepts but never speaks NATS, and a user without the permissions give
// clear errors in bounded time.
func TestCtlConnectErrors(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("alpha", "alpha-0", fake, 2)}})

	// Nothing listens.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "nats://" + ln.Addr().String()
	ln.Close()
	if _, err := llmqctl(t, ctlEnv(cfg, closed), "status"); err == nil || !strings.Contains(err.Error(), "connect to NATS at "+closed) {
		t.Errorf("status with nothing listening: %v", err)
	}

	// Accepts TCP, never answers: the dial is bounded.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	if _, err := llmqctl(t, ctlEnv(cfg, "nats://"+silent.Addr().String()), "dead", "list"); err == nil || !strings.Contains(err.Error(), "connect to NATS") {
		t.Errorf("dead list against a silent address: %v", err)
	}

	// No LLMQ_NATS_URL.
	if _, err := llmqctl(t, ctlEnv(cfg, ""), "status"); err == nil || !strings.Contains(err.Error(), "LLMQ_NATS_URL") {
		t.Errorf("status without LLMQ_NATS_URL: %v", err)
	}

	// A user that may only use its inboxes.
	srv := startSecureNATS(t, server.Options{Users: []*server.User{
		{Username: "admin", Password: "admin-pw"},
		{Username: "nobody", Password: "nobody-pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}},
	}})
	env := ctlEnv(cfg, srv.ClientURL())
	env.NATSUser, env.NATSPassword = "admin", "admin-pw"
	gw := env
	gw.EmbeddedWorkers = 0
	startGateway(t, gw) // creates the streams
	if out := mustCtl(t, env, "dead", "list"); !strings.Contains(out, "Dead letters in LLMQ_DEAD: 0") {
		t.Errorf("dead list as a permitted user:\n%s", out)
	}
	env.NATSUser, env.NATSPassword = "nobody", "nobody-pw"
	for _, args := range [][]string{{"status"}, {"dead", "list"}, {"dead", "purge", "--all"}} {
		_, err := llmqctl(t, env, args...)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("llmqctl %s without permissions: error %v, want one naming the permissions violation", strings.Join(args, " "), err)
		}
	}
}

// TestCtlPauseResume: llmqctl pause stops every worker process from taking
// new requests of a model group, or of one band of it, and keeps them
// queued; the other groups and bands are served; resume serves them.
func TestCtlPauseResume(t *testing.T) {
	const master = "sk-master-pause"
	natsURL := startNATS(t)
	fake := newFake(t)
	cfg := writeConfig(t, configFile{
		ModelList: []deployment{
			fakeDeployment("alpha", "alpha-0", fake, 0),
			fakeDeployment("beta", "beta-0", fake, 0),
		},
		GeneralSettings: &generalSettings{MasterKey: master},
	})
	env := baseEnv(cfg)
	env.NATSURL = natsURL
	g := startGateway(t, env)
	startWorker(t, cfg, natsURL, 2)
	startWorker(t, cfg, natsURL, 2)
	ctlEnv := ctlEnv(cfg, natsURL)
	q := observeQueue(t, natsURL)

	if out := mustCtl(t, ctlEnv, "pause", "beta"); !strings.Contains(out, `paused "beta" (every band)`) {
		t.Errorf("pause beta printed:\n%s", out)
	}
	if out := mustCtl(t, ctlEnv, "pause", "alpha", "--band", strconv.Itoa(bandOf(9))); !strings.Contains(out, `paused "alpha" band `+strconv.Itoa(bandOf(9))) {
		t.Errorf("pause alpha --band printed:\n%s", out)
	}

	// beta (band 0) and alpha band 9 wait; alpha band 0, published last, is served.
	type answer struct {
		name string
		r    *result
		err  error
	}
	answers := make(chan answer, 3)
	send := func(name, group string, priority int) {
		go func() {
			r, err := post(t.Context(), g.URL+"/v1/chat/completions", master, chatBody(group, name, `"priority":`+strconv.Itoa(priority)))
			answers <- answer{name, r, err}
		}()
	}
	send("beta-0", "beta", 0)
	q.waitStored(t, 1)
	send("alpha-9", "alpha", 9)
	q.waitStored(t, 2)
	send("alpha-0", "alpha", 0)
	next := func() answer {
		t.Helper()
		select {
		case a := <-answers:
			return a
		case <-waitCtx(t).Done():
			t.Fatalf("no answer came (the upstream received %q)", contents(fake))
			return answer{}
		}
	}
	first := next()
	if first.err != nil || first.name != "alpha-0" {
		t.Fatalf("first answer: %s %v %v, want alpha-0 (the others are paused)", first.name, first.r, first.err)
	}
	checkServed(t, first.r)
	q.waitMsgs(t, 2)
	if got := contents(fake); len(got) != 1 || got[0] != "alpha-0" {
		t.Fatalf("the upstream received %q, want only alpha-0", got)
	}

	out := mustCtl(t, ctlEnv, "status")
	if !strings.Contains(out, `Paused: "alpha" band `+strconv.Itoa(bandOf(9))+`, "beta" (every band)`) ||
		!tableRow(out, "0", "beta", "1") || !tableRow(out, strconv.Itoa(bandOf(9)), "alpha", "1") {
		t.Errorf("status does not show the paused groups and their requests:\n%s", out)
	}
	var st struct {
		Paused []struct {
			Group string `json:"group"`
			Band  int    `json:"band"`
		} `json:"paused"`
	}
	if r := mustGet(t, g.URL+"/v1/queue", master); json.Unmarshal(r.Body, &st) != nil || len(st.Paused) != 2 ||
		st.Paused[0].Group != "alpha" || st.Paused[0].Band != bandOf(9) || st.Paused[1].Group != "beta" || st.Paused[1].Band != -1 {
		t.Errorf("GET /v1/queue paused: %s", r.Body)
	}

	// Clear errors: nothing paused there, an unknown group, a band out of range.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"resume", "alpha", "--band", "0"}, "not paused"},
		{[]string{"pause", "gamma"}, `unknown model group "gamma"`},
		{[]string{"resume", "gamma"}, `unknown model group "gamma"`},
		{[]string{"pause", "alpha", "--band", "99"}, "band 99 does not exist"},
		{[]string{"pause"}, "usage"},
		{[]string{"pause", "alpha", "--band", "-3"}, "usage"},
	} {
		if _, err := llmqctl(t, ctlEnv, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("llmqctl %s: error %v, want %q", strings.Join(c.args, " "), err, c.want)
		}
	}

	// Resume: the waiting requests are served.
	if out := mustCtl(t, ctlEnv, "resume", "alpha", "--band", strconv.Itoa(bandOf(9))); !strings.Contains(out, `resumed "alpha" band `) {
		t.Errorf("resume alpha --band printed:\n%s", out)
	}
	if a := next(); a.err != nil || a.name != "alpha-9" {
		t.Fatalf("after resuming alpha band 9: %s %v %v", a.name, a.r, a.err)
	} else {
		checkServed(t, a.r)
	}
	if out := mustCtl(t, ctlEnv, "resume", "beta"); !strings.Contains(out, `resumed "beta" (every band)`) {
		t.Errorf("resume beta printed:\n%s", out)
	}
	if a := next(); a.err != nil || a.name != "beta-0" {
		t.Fatalf("after resuming beta: %s %v %v", a.name, a.r, a.err)
	} else {
		checkServed(t, a.r)
	}
	q.waitDrained(t)
	if out := mustCtl(t, ctlEnv, "status"); strings.Contains(out, "Paused") {
		t.Errorf("status after resuming everything:\n%s", out)
	}
}
