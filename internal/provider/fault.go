package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"

	"github.com/tidwall/gjson"

	"github.com/llmq/llmq/pkg/messages"
)

// The faults of a provider call, each decided here and nowhere else. Every
// fault is a *messages.Error of one outcome; the worker's retry policy
// (internal/worker, Policy) decides from the outcome and the provider's
// status whether to retry, cool the deployment down or fall back:
//
//	fault                                           outcome                status
//	refused, DNS, TLS, reset before the answer      provider_unreachable   502
//	a 5xx or 408                                    provider_error         502, the provider's message kept
//	a 429                                           provider_error         (never the caller's: cooldown)
//	another 4xx                                     provider_error         the provider's status and body
//	no answer within the deployment's timeout       provider_timeout       504
//	a 2xx body that is not a JSON object, cut short,
//	  over maxResponseBytes, or a 1xx/3xx status    provider_bad_response  502
//	a 2xx JSON object that is an error ({"error"})  provider_error         502
//	a stream that is not text/event-stream, has no
//	  event, ends without [DONE], breaks, or has a
//	  bad event                                     provider_bad_response  502
//	an error event in a stream                      provider_error         502
//	the caller went away (the call's parent context
//	  ended)                                        cancelled              nothing is written
//
// Only the last is "cancelled": a context the adapter ends itself (its own
// timeout) is a provider_timeout, never the caller leaving.

// statusFault is the fault of a response whose status is not 2xx. It reads
// (a bounded part of) the body and closes it.
func statusFault(res *http.Response) *messages.Error {
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, maxErrorBytes))
	s := res.StatusCode
	e := &messages.Error{Outcome: messages.OutcomeProviderError, ProviderStatus: s, RetryAfter: res.Header.Get("Retry-After")}
	if s < 400 {
		e.Outcome = messages.OutcomeProviderBadResponse
		e.Message = fmt.Sprintf("the provider answered with status %d, which is not an answer", s)
		return e
	}
	var code string
	e.Message, code = errorMessage(body)
	if e.Message == "" {
		e.Message = fmt.Sprintf("the provider answered %d %s", s, http.StatusText(s))
	} else {
		e.Message = fmt.Sprintf("the provider answered %d: %s", s, e.Message)
	}
	if s < 500 && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests {
		// The caller's to fix: the provider's status, and its body when it
		// is an OpenAI-style error.
		e.Status, e.Code = s, code
		if gjson.GetBytes(body, "error").IsObject() {
			e.Body = body
		}
	}
	return e
}

// maxErrorBytes bounds the part of an error body that is read.
const maxErrorBytes = 64 << 10

// errorMessage finds the message and code of an error body in the shapes
// providers use: OpenAI's {"error":{"message","code"}}, {"error":"text"}
// and {"message":"text"}.
func errorMessage(body []byte) (message, code string) {
	if !gjson.ValidBytes(body) {
		return "", ""
	}
	r := gjson.ParseBytes(body)
	switch e := r.Get("error"); {
	case e.IsObject():
		return e.Get("message").String(), e.Get("code").String()
	case e.Type == gjson.String:
		return e.String(), ""
	}
	return r.Get("message").String(), ""
}

// callFault is the fault of a call that failed with err: before the
// provider's answer began (answered false) or while it was read. parent is
// the context the caller passed in, call the adapter's own (with its
// timeout).
func callFault(parent, call context.Context, err error, answered bool) error {
	var e *messages.Error
	switch {
	case errors.As(err, &e):
		return e
	case parent.Err() != nil:
		return fmt.Errorf("%w: %w", messages.ErrCancelled, context.Cause(parent))
	case errors.Is(context.Cause(call), messages.ErrProviderTimeout):
		return &messages.Error{Outcome: messages.OutcomeProviderTimeout, Message: "the provider did not answer in time"}
	case answered:
		return &messages.Error{Outcome: messages.OutcomeProviderBadResponse, Message: "the provider's answer was cut short: " + cause(err)}
	}
	return &messages.Error{Outcome: messages.OutcomeProviderUnreachable, Message: "the provider could not be reached: " + cause(err)}
}

// cause is err without the request URL that net/http puts around it.
func cause(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// bodyFault checks a 2xx answer's body: nil when it is a JSON object that
// is not an error.
func bodyFault(res *http.Response, data []byte) error {
	if len(data) > maxResponseBytes {
		return &messages.Error{Outcome: messages.OutcomeProviderBadResponse, Message: fmt.Sprintf("the provider's answer is larger than %d bytes", maxResponseBytes)}
	}
	if !isObject(data) {
		return &messages.Error{Outcome: messages.OutcomeProviderBadResponse,
			Message: fmt.Sprintf("the provider answered %d with a body that is not a JSON object (Content-Type %q, %d bytes)", res.StatusCode, res.Header.Get("Content-Type"), len(data))}
	}
	if r := gjson.GetBytes(data, "error"); r.Exists() && r.Type != gjson.Null {
		return errorEvent(data, "the provider answered %d with an error: %s", res.StatusCode)
	}
	return nil
}

// errorEvent is the fault of a body or stream event that is an error.
func errorEvent(data []byte, format string, args ...any) *messages.Error {
	msg, code := errorMessage(data)
	if msg == "" {
		msg = string(gjson.GetBytes(data, "error").Raw)
	}
	return &messages.Error{Outcome: messages.OutcomeProviderError, Code: code, Message: fmt.Sprintf(format, append(args, msg)...)}
}

// streamFault checks that a 2xx answer to a stream request is a stream.
func streamFault(res *http.Response) error {
	ct := res.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "text/event-stream" {
		return nil
	}
	return &messages.Error{Outcome: messages.OutcomeProviderBadResponse,
		Message: fmt.Sprintf("the provider answered a stream request with Content-Type %q, not text/event-stream", ct)}
}

// isObject reports whether data is one valid JSON object.
func isObject(data []byte) bool {
	data = bytes.TrimSpace(data)
	return len(data) > 0 && data[0] == '{' && gjson.ValidBytes(data)
}
