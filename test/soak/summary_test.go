package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/fakeupstream"
)

// TestSummaryCatchesUnservedAnswers checks the soak's own checks: each kind
// of 200 that no upstream served in full fails the run, and a served one
// does not.
func TestSummaryCatchesUnservedAnswers(t *testing.T) {
	now := time.Now()
	call := func(seq int, content string, status int, f fakeupstream.Fault) fakeupstream.Request {
		return fakeupstream.Request{Seq: seq, Content: content, Status: status, Fault: f, Received: now, Finished: now}
	}
	ups := []upstream{
		{name: "main", reply: fakeupstream.DefaultReply, calls: []fakeupstream.Request{
			call(1, "soak-1", http.StatusOK, fakeupstream.FaultNone),
			call(2, "soak-2", http.StatusOK, fakeupstream.FaultNone),
		}},
		{name: "spare", reply: spareReply, calls: []fakeupstream.Request{
			call(1, "soak-3", http.StatusOK, fakeupstream.FaultGarbage),
			call(2, "soak-4", http.StatusOK, fakeupstream.FaultCut),
			call(3, "soak-5", http.StatusOK, fakeupstream.FaultNone),
		}},
	}
	served := outcome{sent: true, content: "soak-1", group: "soak-a", kind: "chat", status: 200, text: fakeupstream.DefaultReply, answerID: "chatcmpl-fake-1", deployment: "soak-a-0"}
	for _, tc := range []struct {
		name string
		r    outcome
		want string // a figure's line that must appear, with its count
		ok   bool
	}{
		{"served", served, "answered 200 without being served** (a 200, or a stream ending in [DONE], that is not an answer an upstream gave in full to that request) | **0**", true},
		{"served by the spare", outcome{sent: true, content: "soak-5", group: "soak-a", kind: "chat", status: 200, text: spareReply, answerID: "chatcmpl-fake-3", deployment: "soak-a-1"}, "served by the spare upstream | 1", true},
		{"a stream that ended with [DONE]", outcome{sent: true, content: "soak-5", group: "soak-a", kind: "stream", status: 200, text: spareReply, answerID: "chatcmpl-fake-3", done: true, deployment: "soak-a-0"}, "200 served (stream) | 1", true},
		{"text no upstream gave", func() outcome { r := served; r.text = ""; return r }(), "200 WITHOUT BEING SERVED | 1", false},
		{"an id no call has", func() outcome { r := served; r.answerID = "chatcmpl-fake-9"; return r }(), "200 WITHOUT BEING SERVED | 1", false},
		{"the spare's garbage call", outcome{sent: true, content: "soak-3", group: "soak-a", kind: "chat", status: 200, text: spareReply, answerID: "chatcmpl-fake-1", deployment: "soak-a-1"}, "200 WITHOUT BEING SERVED | 1", false},
		{"a stream cut at the upstream, yet ended with [DONE]", outcome{sent: true, content: "soak-4", group: "soak-a", kind: "stream", status: 200, text: spareReply, answerID: "chatcmpl-fake-2", done: true}, "200 WITHOUT BEING SERVED | 1", false},
		{"a stream of two answers", outcome{sent: true, content: "soak-5", group: "soak-a", kind: "stream", status: 200, text: spareReply, answerID: "chatcmpl-fake-3", mixed: true, done: true}, "200 WITHOUT BEING SERVED | 1", false},
		{"a stream with an error event, then [DONE]", outcome{sent: true, content: "soak-5", group: "soak-a", kind: "stream", status: 200, text: spareReply, answerID: "chatcmpl-fake-3", code: "stream_error:provider_bad_response", done: true}, "200 WITHOUT BEING SERVED | 1", false},
		{"another request's answer", func() outcome { r := served; r.answerID = "chatcmpl-fake-2"; return r }(), "200 WRONG ANSWER (another request's) | 1", false},
		{"a served answer naming the other upstream's deployment", func() outcome { r := served; r.deployment = "soak-a-1"; return r }(), "names a deployment of another upstream** | **1**", false},
		{"a stream without [DONE] is a failure outcome, not a 200", outcome{sent: true, content: "soak-4", group: "soak-a", kind: "stream", status: 200, text: "hello", answerID: "chatcmpl-fake-2", code: "stream_error:provider_bad_response"}, "200 stream ended with stream_error:provider_bad_response | 1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := summarize(options{}, []outcome{tc.r}, ups, spareWindows(), &faults{}, 0, 0, time.Second, time.Second)
			if rep.ok != tc.ok || !strings.Contains(rep.text, tc.want) {
				t.Errorf("ok %v, want %v; want a line with %q in:\n%s", rep.ok, tc.ok, tc.want, rep.text)
			}
		})
	}
}
