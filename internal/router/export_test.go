package router

import "time"

// SetClock makes r read the time from now (tests).
func (r *Router) SetClock(now func() time.Time) { r.now = now }
