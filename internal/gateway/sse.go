package gateway

import (
	"net/http"
	"time"

	"github.com/llmq/llmq/pkg/messages"
)

// sseWriteTimeout bounds one write to a streaming client. A client that does
// not read for this long is cut off, so a slow reader holds nothing but its
// own bounded buffer.
const sseWriteTimeout = 10 * time.Second

// sseWriter writes server-sent events exactly as OpenAI does: "data: <json>"
// events, flushed one by one, and "data: [DONE]" at the end.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

func newSSE(w http.ResponseWriter) *sseWriter {
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// event writes one event, sending the headers first if needed.
func (s *sseWriter) event(data []byte) error {
	if !s.started {
		h := s.w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("Connection", "keep-alive")
		h.Set("X-Accel-Buffering", "no") // tell proxies such as nginx not to buffer
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
	if _, err := s.w.Write(append(append([]byte("data: "), data...), '\n', '\n')); err != nil {
		return err
	}
	return s.rc.Flush()
}

// finish ends the stream: [DONE] after success, an error event otherwise.
func (s *sseWriter) finish(err error) (messages.Outcome, int) {
	if err == nil {
		_ = s.event([]byte("[DONE]"))
		return messages.OutcomeServed, http.StatusOK
	}
	e := errorOf(err)
	_ = s.event(messages.ErrorBody(e))
	return e.Outcome, e.HTTPStatus()
}
