package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// Observer is supplied by the caller (tap). Match is called on every proxied
// request and must be cheap; Before/After only for matched requests.
//
// The interface uses only standard-library types so that an implementation
// does not need to import this package. Captured bodies are shared with the
// observer read-only; proxy keeps nothing of them once the exchange is over.
type Observer interface {
	// Match reports whether the exchange is interesting, by route alone:
	// the method, the Host and the decoded path (URL.Path) of the request
	// as it will be sent upstream. Both forwarding paths (the lane and
	// net/http) ask with the same three values. It must not block.
	Match(method, host, path string) bool
	// Before runs before forwarding. r is a read-only view of the request as it will be sent
	// upstream (headers after X-Forwarded-* processing, so the first X-Forwarded-For entry is the
	// client IP authentik will believe; Body is nil); body is the first bytes of the request body
	// (at most the capture limit, default 64 KiB; the full body still reaches authentik). ctx carries
	// the before-deadline (default 2 s). The returned state is handed to After. If Before overruns,
	// the request goes on, the miss is counted, and After receives a nil state.
	Before(ctx context.Context, r *http.Request, body []byte) (state any)
	// After runs once the upstream answered and before the response is released to the client:
	// status, response headers (Set-Cookie included) and the first bytes of the response body.
	// ctx carries the after-deadline (default 1 s); past it the response is released and the miss
	// counted.
	After(ctx context.Context, state any, r *http.Request, status int, header http.Header, body []byte)
}

// observation carries one matched exchange between its two steps.
type observation struct {
	view  *http.Request
	state any
}

// readObservedBody reads an observed request's whole body before anything
// is forwarded, so the observer decides on what authentik will act on: a
// slow body cannot be cut at the observer's bound, nor a long one at the
// capture limit. It is bounded by BodyTimeout and CaptureLimit; past them
// the request is refused (408, 413) and nothing is forwarded. out.Body is
// replaced by the bytes read.
func (p *forwarder) readObservedBody(w http.ResponseWriter, out *http.Request) ([]byte, int, error) {
	if out.Body == nil || out.Body == http.NoBody {
		return nil, 0, nil
	}
	rc := http.NewResponseController(w)
	deadlineSet := rc.SetReadDeadline(time.Now().Add(p.cfg.BodyTimeout)) == nil
	body, err := io.ReadAll(io.LimitReader(out.Body, int64(p.cfg.CaptureLimit)+1))
	if deadlineSet {
		_ = rc.SetReadDeadline(time.Time{})
	}
	var ne net.Error
	switch {
	case err != nil && errors.As(err, &ne) && ne.Timeout():
		return nil, http.StatusRequestTimeout, err
	case err != nil:
		return nil, http.StatusBadRequest, err
	case len(body) > p.cfg.CaptureLimit:
		return nil, http.StatusRequestEntityTooLarge, errors.New("proxy: observed request body over the capture limit")
	}
	out.Body = &clientBody{ReadCloser: io.NopCloser(bytes.NewReader(body))}
	out.ContentLength = int64(len(body))
	out.TransferEncoding = nil
	return body, 0, nil
}

// before runs Observer.Before on the whole request body, bounded by
// BeforeTimeout. An overrun counts as a miss; a panic in Before is logged
// and treated as a nil state.
func (p *forwarder) before(out *http.Request, body []byte) *observation {
	ctx, cancel := context.WithTimeout(out.Context(), p.cfg.BeforeTimeout)
	defer cancel()

	view := out.Clone(ctx)
	view.Body = nil
	view.GetBody = nil
	obs := &observation{view: view}

	done := make(chan any, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				p.log.Error("observer Before panicked", "request_id", requestID(out), "panic", v)
				done <- nil
			}
		}()
		done <- p.cfg.Observer.Before(ctx, view, body)
	}()
	select {
	case obs.state = <-done:
	case <-ctx.Done():
		if out.Context().Err() == nil { // a departed client is not the observer's miss
			p.miss("before", out)
		}
	}
	return obs
}

// after captures the first bytes of the response body (replacing resp.Body
// with a reader that still yields all of it) and runs Observer.After,
// together bounded by AfterTimeout; as in before, the capture takes at most
// half the bound, so a streaming response is captured as far as it got.
func (p *forwarder) after(obs *observation, out *http.Request, resp *http.Response, captureBody bool) {
	// The upstream has acted by now: the client leaving must not cut the
	// observer short, so only the after-deadline bounds it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(out.Context()), p.cfg.AfterTimeout)
	defer cancel()

	var c captured
	if captureBody {
		cctx, ccancel := context.WithTimeout(ctx, p.cfg.AfterTimeout/2)
		c = capture(cctx, resp.Body, p.cfg.CaptureLimit, true)
		ccancel()
		resp.Body = c.rest
	}
	header := resp.Header.Clone()
	status := resp.StatusCode

	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if v := recover(); v != nil {
				p.log.Error("observer After panicked", "request_id", requestID(out), "panic", v)
			}
		}()
		p.cfg.Observer.After(ctx, obs.state, obs.view, status, header, c.prefix)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		p.miss("after", out)
	}
}

func (p *forwarder) miss(step string, r *http.Request) {
	if step == "before" {
		p.stats.beforeMisses.Add(1)
	} else {
		p.stats.afterMisses.Add(1)
	}
	p.log.Warn("observer step overran its bound; exchange released",
		"step", step, "request_id", requestID(r), "method", r.Method, "path", r.URL.Path)
	if p.cfg.OnObserverMiss != nil {
		p.cfg.OnObserverMiss(step)
	}
}

// requestID returns the caller's X-Request-Id, if any, for log correlation.
func requestID(r *http.Request) string {
	if v := r.Header["X-Request-Id"]; len(v) > 0 {
		return v[0]
	}
	return ""
}
