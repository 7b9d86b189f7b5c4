package limiter

import (
	"errors"
	"fmt"
	"time"
)

// Error classes. Every error the package returns matches one of them with
// errors.Is; the specifics are wrapped around it.
var (
	// ErrLimited reports that a deployment has no capacity now. The error is a
	// *LimitedError that says when capacity is expected.
	ErrLimited = errors.New("limiter: deployment at its limit")
	// ErrTooLarge reports a reservation that can never be admitted: it needs
	// more tokens than the deployment allows in one period.
	ErrTooLarge = errors.New("limiter: reservation exceeds the per-period limit")
	// ErrUnavailable reports that the shared state in NATS could not be read
	// or written.
	ErrUnavailable = errors.New("limiter: shared state unavailable")
	// ErrContention reports that a settle or cancel lost too many
	// compare-and-set races in a row and gave up.
	ErrContention = errors.New("limiter: too many concurrent updates")
	// ErrSlotLost reports that a concurrency slot expired before it was
	// refreshed, so another holder may have taken it.
	ErrSlotLost = errors.New("limiter: concurrency slot lost")
	// ErrClosed reports use of a closed Set.
	ErrClosed = errors.New("limiter: set closed")
	// ErrInvalidOptions reports bad Options.
	ErrInvalidOptions = errors.New("limiter: invalid options")
)

// Reasons a reservation is refused, as found in LimitedError.Reason. They are
// a small fixed set, fit for a metric label.
const (
	ReasonRPM        = "rpm"          // requests per minute (per period)
	ReasonTPM        = "tpm"          // tokens per minute (per period)
	ReasonParallel   = "max_parallel" // every concurrency slot is held
	ReasonCooldown   = "cooldown"     // the deployment is cooling down
	ReasonContention = "contention"   // lost every compare-and-set race; retry soon
)

// LimitedError is the error of a refused reservation. It matches ErrLimited.
type LimitedError struct {
	// Until is when capacity is expected. For ReasonRPM and ReasonTPM it is
	// exact unless other processes reserve or give back meanwhile; for
	// ReasonParallel it is the latest time a crashed holder's slot frees
	// itself, and a released slot shows up earlier on Set.Changed.
	Until time.Time
	// Reason is one of the Reason constants.
	Reason string
	// Detail is the reason given to Cooldown, if Reason is ReasonCooldown.
	Detail string
}

func (e *LimitedError) Error() string {
	msg := fmt.Sprintf("%v: %s until %s", ErrLimited, e.Reason, e.Until.Format(time.RFC3339Nano))
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	return msg
}

// Unwrap returns ErrLimited.
func (e *LimitedError) Unwrap() error { return ErrLimited }
