package messages

import (
	"errors"
	"fmt"
	"net/http"
)

// Outcome is how a request ended. It is both the value code switches on and
// the bounded metric label, and it crosses NATS in the Llmq-Outcome header.
type Outcome uint8

// The outcomes, each with one HTTP status (see [Outcome.Status]).
const (
	OutcomeServed              Outcome = iota // 200: answered by a provider (or a mock deployment)
	OutcomeInvalidRequest                     // 400: bad JSON, bad field types, non-integer priority
	OutcomeUnauthenticated                    // 401: missing or wrong key; nothing was queued
	OutcomeForbidden                          // 403: the key may not use this model group or endpoint, or name a tenant
	OutcomeUnknownModel                       // 404: no such model group
	OutcomeQueueTimeout                       // 408: the queue deadline passed before a worker started it
	OutcomeBodyTooLarge                       // 413: the body is over the configured maximum
	OutcomeQueueFull                          // 429: the backlog of its band and group is full
	OutcomeRateLimited                        // 429: the caller's key is over its rpm_limit
	OutcomeCancelled                          // 499: the caller went away
	OutcomeProviderError                      // the provider's 4xx, else 502
	OutcomeBrokerUnavailable                  // 503: NATS or JetStream cannot take the request
	OutcomeProviderTimeout                    // 504: the provider did not answer in time
	OutcomeInternal                           // 500: a bug or an undecodable message
	OutcomeProviderUnreachable                // 502: refused, DNS, TLS, or reset before the answer
	OutcomeProviderBadResponse                // 502: a 200 whose body is not a JSON object, cut short, or a broken stream
	outcomeCount
)

var outcomeNames = [...]string{
	OutcomeServed:              "served",
	OutcomeInvalidRequest:      "invalid_request",
	OutcomeUnauthenticated:     "unauthenticated",
	OutcomeForbidden:           "forbidden",
	OutcomeUnknownModel:        "unknown_model",
	OutcomeQueueTimeout:        "queue_timeout",
	OutcomeBodyTooLarge:        "body_too_large",
	OutcomeQueueFull:           "queue_full",
	OutcomeRateLimited:         "rate_limited",
	OutcomeCancelled:           "cancelled",
	OutcomeProviderError:       "provider_error",
	OutcomeBrokerUnavailable:   "broker_unavailable",
	OutcomeProviderTimeout:     "provider_timeout",
	OutcomeInternal:            "internal_error",
	OutcomeProviderUnreachable: "provider_unreachable",
	OutcomeProviderBadResponse: "provider_bad_response",
}

var outcomeStatus = [...]int{
	OutcomeServed:              http.StatusOK,
	OutcomeInvalidRequest:      http.StatusBadRequest,
	OutcomeUnauthenticated:     http.StatusUnauthorized,
	OutcomeForbidden:           http.StatusForbidden,
	OutcomeUnknownModel:        http.StatusNotFound,
	OutcomeQueueTimeout:        http.StatusRequestTimeout,
	OutcomeBodyTooLarge:        http.StatusRequestEntityTooLarge,
	OutcomeQueueFull:           http.StatusTooManyRequests,
	OutcomeRateLimited:         http.StatusTooManyRequests,
	OutcomeCancelled:           499,
	OutcomeProviderError:       http.StatusBadGateway,
	OutcomeBrokerUnavailable:   http.StatusServiceUnavailable,
	OutcomeProviderTimeout:     http.StatusGatewayTimeout,
	OutcomeInternal:            http.StatusInternalServerError,
	OutcomeProviderUnreachable: http.StatusBadGateway,
	OutcomeProviderBadResponse: http.StatusBadGateway,
}

// String returns the outcome's stable name, e.g. "queue_timeout".
func (o Outcome) String() string {
	if o < outcomeCount {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Status returns the HTTP status of the outcome. For OutcomeProviderError it
// is 502; a provider's own 4xx is carried separately and takes precedence.
func (o Outcome) Status() int {
	if o < outcomeCount {
		return outcomeStatus[o]
	}
	return http.StatusInternalServerError
}

// ErrorType returns the OpenAI error "type" used in error bodies of this outcome.
func (o Outcome) ErrorType() string {
	switch o {
	case OutcomeInvalidRequest, OutcomeUnknownModel, OutcomeBodyTooLarge:
		return "invalid_request_error"
	case OutcomeUnauthenticated:
		return "authentication_error"
	case OutcomeForbidden:
		return "permission_error"
	case OutcomeQueueFull, OutcomeRateLimited:
		return "rate_limit_error"
	case OutcomeQueueTimeout, OutcomeProviderTimeout:
		return "timeout_error"
	default:
		return "api_error"
	}
}

// Outcomes returns every outcome, in order.
func Outcomes() []Outcome {
	out := make([]Outcome, outcomeCount)
	for i := range out {
		out[i] = Outcome(i)
	}
	return out
}

// ParseOutcome returns the outcome named s.
func ParseOutcome(s string) (Outcome, bool) {
	for i, n := range outcomeNames {
		if n == s {
			return Outcome(i), true
		}
	}
	return 0, false
}

// Error class sentinels. Every [*Error] matches the sentinel of its outcome
// with errors.Is, so callers switch on classes, not on strings.
var (
	ErrInvalidRequest      = errors.New("invalid request")
	ErrUnauthenticated     = errors.New("unauthenticated")
	ErrForbidden           = errors.New("forbidden")
	ErrUnknownModel        = errors.New("unknown model group")
	ErrQueueTimeout        = errors.New("queue deadline passed")
	ErrBodyTooLarge        = errors.New("request body too large")
	ErrQueueFull           = errors.New("queue full")
	ErrRateLimited         = errors.New("rate limited")
	ErrCancelled           = errors.New("request cancelled")
	ErrProvider            = errors.New("provider error")
	ErrBrokerUnavailable   = errors.New("broker unavailable")
	ErrProviderTimeout     = errors.New("provider timeout")
	ErrInternal            = errors.New("internal error")
	ErrProviderUnreachable = errors.New("provider unreachable")
	ErrProviderBadResponse = errors.New("provider bad response")
)

var outcomeErr = [...]error{
	OutcomeInvalidRequest:      ErrInvalidRequest,
	OutcomeUnauthenticated:     ErrUnauthenticated,
	OutcomeForbidden:           ErrForbidden,
	OutcomeUnknownModel:        ErrUnknownModel,
	OutcomeQueueTimeout:        ErrQueueTimeout,
	OutcomeBodyTooLarge:        ErrBodyTooLarge,
	OutcomeQueueFull:           ErrQueueFull,
	OutcomeRateLimited:         ErrRateLimited,
	OutcomeCancelled:           ErrCancelled,
	OutcomeProviderError:       ErrProvider,
	OutcomeBrokerUnavailable:   ErrBrokerUnavailable,
	OutcomeProviderTimeout:     ErrProviderTimeout,
	OutcomeInternal:            ErrInternal,
	OutcomeProviderUnreachable: ErrProviderUnreachable,
	OutcomeProviderBadResponse: ErrProviderBadResponse,
}

// Sentinel returns the error class of o (nil for OutcomeServed).
func (o Outcome) Sentinel() error {
	if o < outcomeCount && o != OutcomeServed {
		return outcomeErr[o]
	}
	if o == OutcomeServed {
		return nil
	}
	return ErrInternal
}

// OutcomeOf returns the outcome whose class err matches, or OutcomeInternal.
func OutcomeOf(err error) Outcome {
	var e *Error
	if errors.As(err, &e) {
		return e.Outcome
	}
	for o := OutcomeInvalidRequest; o < outcomeCount; o++ {
		if errors.Is(err, outcomeErr[o]) {
			return o
		}
	}
	return OutcomeInternal
}

// Error is a failed request as the caller sees it: the outcome, the HTTP
// status, and an OpenAI-style message and param.
type Error struct {
	Outcome Outcome
	Status  int    // HTTP status; 0 means Outcome.Status()
	Message string // human-readable
	Param   string // the offending request field, if any
	Code    string // provider or llmq error code, if any
	// Body, when set, is the exact error body to return (a provider's own body).
	Body []byte
	// RetryAfter, when set, is the Retry-After header value to send.
	RetryAfter string
	// ProviderStatus is the status a provider answered with, when one did
	// (for retry decisions; it does not cross NATS).
	ProviderStatus int
}

// Errorf builds an *Error of outcome o with a formatted message.
func Errorf(o Outcome, param, format string, args ...any) *Error {
	return &Error{Outcome: o, Param: param, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Param != "" {
		return fmt.Sprintf("%s: %s (param %s)", e.Outcome, e.Message, e.Param)
	}
	return fmt.Sprintf("%s: %s", e.Outcome, e.Message)
}

// Is makes an *Error match the sentinel of its outcome.
func (e *Error) Is(target error) bool { return target == e.Outcome.Sentinel() }

// HTTPStatus returns the status to answer with.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	return e.Outcome.Status()
}
