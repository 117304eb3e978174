package sidecar

import (
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// combineHooks fans the outbox's callbacks out to every consumer (metrics,
// tracing, the dashboard).
func combineHooks(all ...outbox.Hooks) outbox.Hooks {
	var h outbox.Hooks
	for _, x := range all {
		x := x
		if f := x.OnEnqueue; f != nil {
			prev := h.OnEnqueue
			h.OnEnqueue = func(s string, q, d int) {
				if prev != nil {
					prev(s, q, d)
				}
				f(s, q, d)
			}
		}
		if f := x.OnAttempt; f != nil {
			prev := h.OnAttempt
			h.OnAttempt = func(s, j, tp string, a outbox.Attempt) {
				if prev != nil {
					prev(s, j, tp, a)
				}
				f(s, j, tp, a)
			}
		}
		if f := x.OnDelivered; f != nil {
			prev := h.OnDelivered
			h.OnDelivered = func(s, j string, d time.Duration) {
				if prev != nil {
					prev(s, j, d)
				}
				f(s, j, d)
			}
		}
		if f := x.OnDeadLetter; f != nil {
			prev := h.OnDeadLetter
			h.OnDeadLetter = func(s, j, r string) {
				if prev != nil {
					prev(s, j, r)
				}
				f(s, j, r)
			}
		}
		if f := x.OnBackoff; f != nil {
			prev := h.OnBackoff
			h.OnBackoff = func(s string, u time.Time, e string) {
				if prev != nil {
					prev(s, u, e)
				}
				f(s, u, e)
			}
		}
		if x.Trace != nil {
			h.Trace = x.Trace // one tracer: the last one given
		}
		if f := x.OnFenced; f != nil {
			prev := h.OnFenced
			h.OnFenced = func(s string, tok, cur uint64) {
				if prev != nil {
					prev(s, tok, cur)
				}
				f(s, tok, cur)
			}
		}
	}
	return h
}
