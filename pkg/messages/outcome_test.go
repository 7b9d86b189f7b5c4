package messages_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/llmq/llmq/pkg/messages"
)

func TestOutcomeNames(t *testing.T) {
	seen := make(map[string]messages.Outcome)
	for _, o := range messages.Outcomes() {
		s := o.String()
		if s == "" || strings.HasPrefix(s, "outcome(") {
			t.Errorf("Outcome %d has no name: %q", uint8(o), s)
		}
		if prev, dup := seen[s]; dup {
			t.Errorf("outcomes %d and %d share the name %q", uint8(prev), uint8(o), s)
		}
		seen[s] = o
		got, ok := messages.ParseOutcome(s)
		if !ok || got != o {
			t.Errorf("ParseOutcome(%q) = %v, %v; want %v, true", s, got, ok, o)
		}
	}
	if len(seen) < 10 {
		t.Errorf("only %d outcomes", len(seen))
	}
	for _, s := range []string{"", "Served", "unknown", "outcome(200)"} {
		if o, ok := messages.ParseOutcome(s); ok {
			t.Errorf("ParseOutcome(%q) = %v, true; want false", s, o)
		}
	}
	if got := messages.Outcome(200).String(); got != "outcome(200)" {
		t.Errorf("Outcome(200).String() = %q", got)
	}
}

func TestOutcomeStatus(t *testing.T) {
	tests := []struct {
		outcome messages.Outcome
		name    string
		status  int
	}{
		{messages.OutcomeServed, "served", http.StatusOK},
		{messages.OutcomeInvalidRequest, "invalid_request", http.StatusBadRequest},
		{messages.OutcomeUnauthenticated, "unauthenticated", http.StatusUnauthorized},
		{messages.OutcomeForbidden, "forbidden", http.StatusForbidden},
		{messages.OutcomeUnknownModel, "unknown_model", http.StatusNotFound},
		{messages.OutcomeQueueTimeout, "queue_timeout", http.StatusRequestTimeout},
		{messages.OutcomeBodyTooLarge, "body_too_large", http.StatusRequestEntityTooLarge},
		{messages.OutcomeQueueFull, "queue_full", http.StatusTooManyRequests},
		{messages.OutcomeRateLimited, "rate_limited", http.StatusTooManyRequests},
		{messages.OutcomeCancelled, "cancelled", 499},
		{messages.OutcomeProviderError, "provider_error", http.StatusBadGateway},
		{messages.OutcomeBrokerUnavailable, "broker_unavailable", http.StatusServiceUnavailable},
		{messages.OutcomeProviderTimeout, "provider_timeout", http.StatusGatewayTimeout},
		{messages.OutcomeInternal, "internal_error", http.StatusInternalServerError},
		{messages.OutcomeProviderUnreachable, "provider_unreachable", http.StatusBadGateway},
		{messages.OutcomeProviderBadResponse, "provider_bad_response", http.StatusBadGateway},
		{messages.Outcome(200), "outcome(200)", http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.outcome.String(); got != tt.name {
				t.Errorf("String() = %q, want %q", got, tt.name)
			}
			if got := tt.outcome.Status(); got != tt.status {
				t.Errorf("Status() = %d, want %d", got, tt.status)
			}
		})
	}
	if len(tests)-1 != len(messages.Outcomes()) {
		t.Errorf("the table covers %d outcomes, there are %d", len(tests)-1, len(messages.Outcomes()))
	}
}

func TestOutcomeSentinels(t *testing.T) {
	if err := messages.OutcomeServed.Sentinel(); err != nil {
		t.Errorf("OutcomeServed.Sentinel() = %v, want nil", err)
	}
	if err := messages.Outcome(200).Sentinel(); err != messages.ErrInternal {
		t.Errorf("Outcome(200).Sentinel() = %v, want ErrInternal", err)
	}
	seen := make(map[error]messages.Outcome)
	for _, o := range messages.Outcomes()[1:] {
		s := o.Sentinel()
		if s == nil {
			t.Errorf("%v has no sentinel", o)
			continue
		}
		if prev, dup := seen[s]; dup {
			t.Errorf("%v and %v share the sentinel %v", prev, o, s)
		}
		seen[s] = o
		// A wrapped sentinel maps back to its outcome.
		if got := messages.OutcomeOf(fmt.Errorf("%w: %w", s, errors.New("cause"))); got != o {
			t.Errorf("OutcomeOf(wrapped %v) = %v, want %v", s, got, o)
		}
		// An *Error matches its sentinel and no other.
		e := messages.Errorf(o, "model", "something about %s", "model")
		if !errors.Is(e, s) {
			t.Errorf("Errorf(%v) does not match %v", o, s)
		}
		if errors.Is(e, errors.New(s.Error())) {
			t.Errorf("Errorf(%v) matches a different error with the same text", o)
		}
		if got := messages.OutcomeOf(fmt.Errorf("wrapped: %w", e)); got != o {
			t.Errorf("OutcomeOf(wrapped *Error of %v) = %v", o, got)
		}
		if got := e.HTTPStatus(); got != o.Status() {
			t.Errorf("Errorf(%v).HTTPStatus() = %d, want %d", o, got, o.Status())
		}
	}
	for i, a := range messages.Outcomes()[1:] {
		for _, b := range messages.Outcomes()[1+i+1:] {
			if errors.Is(&messages.Error{Outcome: a}, b.Sentinel()) {
				t.Errorf("an *Error of %v matches the sentinel of %v", a, b)
			}
		}
	}
	if got := messages.OutcomeOf(errors.New("boom")); got != messages.OutcomeInternal {
		t.Errorf("OutcomeOf(unrelated error) = %v, want internal_error", got)
	}
}

func TestErrorMessageAndStatus(t *testing.T) {
	e := messages.Errorf(messages.OutcomeInvalidRequest, "priority", "priority must be an integer, got %s", `"x"`)
	if got, want := e.Error(), `invalid_request: priority must be an integer, got "x" (param priority)`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e = messages.Errorf(messages.OutcomeQueueFull, "", "band 3 is full")
	if got, want := e.Error(), "queue_full: band 3 is full"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e.Status = 418
	if got := e.HTTPStatus(); got != 418 {
		t.Errorf("HTTPStatus() with Status set = %d, want 418", got)
	}
}

func TestOutcomeErrorType(t *testing.T) {
	tests := []struct {
		outcome messages.Outcome
		typ     string
	}{
		{messages.OutcomeInvalidRequest, "invalid_request_error"},
		{messages.OutcomeUnknownModel, "invalid_request_error"},
		{messages.OutcomeBodyTooLarge, "invalid_request_error"},
		{messages.OutcomeUnauthenticated, "authentication_error"},
		{messages.OutcomeForbidden, "permission_error"},
		{messages.OutcomeQueueFull, "rate_limit_error"},
		{messages.OutcomeRateLimited, "rate_limit_error"},
		{messages.OutcomeQueueTimeout, "timeout_error"},
		{messages.OutcomeProviderTimeout, "timeout_error"},
		{messages.OutcomeProviderError, "api_error"},
		{messages.OutcomeBrokerUnavailable, "api_error"},
		{messages.OutcomeInternal, "api_error"},
		{messages.OutcomeProviderUnreachable, "api_error"},
		{messages.OutcomeProviderBadResponse, "api_error"},
	}
	for _, tt := range tests {
		if got := tt.outcome.ErrorType(); got != tt.typ {
			t.Errorf("%v.ErrorType() = %q, want %q", tt.outcome, got, tt.typ)
		}
	}
}
