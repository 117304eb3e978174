package proxy

import (
	"sync/atomic"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
)

// Stats is a snapshot of the server's counters since New.
type Stats struct {
	// Proxied counts requests handed to the proxy core (SSF routes excluded).
	Proxied uint64
	// SSF counts requests answered by the SSF handler.
	SSF uint64
	// Observed counts proxied requests the observer matched.
	Observed uint64
	// BeforeMisses and AfterMisses count observer steps that overran their bound.
	BeforeMisses, AfterMisses uint64
	// UpstreamErrors counts requests answered 502 or cut because the
	// upstream failed; UpstreamTimeouts those answered 504.
	UpstreamErrors, UpstreamTimeouts uint64
	// ClientGone counts requests the client abandoned before the end.
	ClientGone uint64
	// ClientErrors counts requests refused because the client's body was
	// malformed.
	ClientErrors uint64
	// Upgrades counts connections switched to another protocol (WebSocket).
	Upgrades uint64
	// Lane counts the proxied requests the proxy's own HTTP/1.1 lane carried
	// (bodyless GET and HEAD on plain-HTTP listeners); the rest went through
	// net/http.
	Lane uint64
	// ConnsRefused counts client connections closed at once because
	// MaxConns were open.
	ConnsRefused uint64
}

type counters struct {
	lane.Counters             // proxied, client and upstream errors: the lane adds to them too
	ssf, observed             atomic.Uint64
	beforeMisses, afterMisses atomic.Uint64
	upgrades, connsRefused    atomic.Uint64
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Proxied: c.Proxied.Load(), SSF: c.ssf.Load(), Observed: c.observed.Load(),
		BeforeMisses: c.beforeMisses.Load(), AfterMisses: c.afterMisses.Load(),
		UpstreamErrors: c.UpstreamErrors.Load(), UpstreamTimeouts: c.UpstreamTimeouts.Load(),
		ClientGone: c.ClientGone.Load(), ClientErrors: c.ClientErrors.Load(), Upgrades: c.upgrades.Load(),
		Lane: c.Lane.Load(), ConnsRefused: c.connsRefused.Load(),
	}
}
