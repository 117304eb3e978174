package outbox

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"
)

// Config configures an Outbox. Zero durations take the defaults named on
// each field.
type Config struct {
	Store    *Store
	Signer   Signer
	Notifier Notifier        // nil: in-process
	Reporter FailureReporter // may be nil
	Logger   *slog.Logger    // nil: discard
	Clock    func() time.Time
	// After returns a channel that receives once d has passed on Clock
	// (nil: time.After). Tests inject it together with Clock, so backoffs,
	// long polls and sweeps follow the injected time.
	After func(d time.Duration) <-chan time.Time
	// Jitter returns a number in [0,1) for the backoff jitter (nil: random).
	Jitter func() float64

	AllowPrivateEndpoints bool
	PushTimeout           time.Duration // 10s: one push attempt, all in
	ConnectTimeout        time.Duration // 5s
	MaxBackoff            time.Duration // 10m
	PauseAfter            time.Duration // 72h
	Retention             time.Duration // 720h: undelivered SETs
	DeliveredRetention    time.Duration // 72h: records of delivered SETs
	LeaseTimeout          time.Duration // 60s: poll hand-out lease
	MaxLongPoll           time.Duration // 30s: long-poll bound
	SweepInterval         time.Duration // 1m: retention and lease sweeps

	// Workers caps push attempts in flight over all streams (default 64).
	Workers int
	// StreamConcurrency caps push attempts in flight on one stream (default
	// 1, which keeps strict order; above 1 SETs may overtake each other).
	StreamConcurrency int
	// SignAhead is how many queued SETs a push stream loads and signs in
	// parallel before posting them in order (default 32).
	SignAhead int
	// Signers caps concurrent Sign calls (default GOMAXPROCS).
	Signers int
	// MaxPollEvents caps the SETs in one poll response, also when the
	// receiver sent no maxEvents (default 1000).
	MaxPollEvents int

	// TLSConfig is cloned for push connections (tests add RootCAs).
	// Certificates are always verified.
	TLSConfig *tls.Config
	// LookupIP resolves push hosts (nil: net.DefaultResolver). Every
	// answer is checked before connecting.
	LookupIP func(ctx context.Context, host string) ([]net.IPAddr, error)
	// Transport replaces the push transport entirely (benchmarks only; the
	// destination checks then belong to it).
	Transport http.RoundTripper

	// HolderID names this replica as a lease holder (default: random per
	// Outbox). Replicas sharing a store must have distinct ids.
	HolderID string
	// LeaseTTL is how long a stream's dispatch lease lasts unrenewed
	// (default 15s): the time another replica waits before it takes over
	// the stream of a holder that died. While a dispatcher delivers (a
	// push attempt in flight included, however long) a heartbeat renews
	// the lease every LeaseTTL/3; a holder that cannot renew it for
	// LeaseTTL stops. Among replicas sharing a store only the holder
	// delivers the stream, and every delivery outcome it writes carries
	// the lease's fencing token.
	LeaseTTL time.Duration

	Hooks Hooks
}

// Hooks are optional callbacks for metrics and tracing. They run on the
// delivery path and must be quick.
type Hooks struct {
	// OnEnqueue is called after a commit with the SETs queued and dropped.
	OnEnqueue func(streamID string, queued, dropped int)
	// OnAttempt is called after each push attempt.
	OnAttempt func(streamID, jti, traceParent string, a Attempt)
	// OnDelivered is called when a SET is delivered (push 2xx or poll ack),
	// with the time since it was enqueued.
	OnDelivered func(streamID, jti string, sinceEnqueue time.Duration)
	// OnDeadLetter is called when a SET goes to the dead letter.
	OnDeadLetter func(streamID, jti, reason string)
	// OnBackoff is called when a push stream starts waiting.
	OnBackoff func(streamID string, until time.Time, lastErr string)
	// OnFenced is called when a delivery outcome (or a pause report) of a
	// dispatcher that lost its stream's lease is refused.
	OnFenced func(streamID string, token, current uint64)
	// Trace follows each SET's delivery in its trace (nil: not traced).
	Trace DeliveryTracer
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("outbox: Store is required"))
	}
	if c.Signer == nil {
		errs = append(errs, errors.New("outbox: Signer is required"))
	}
	neg := func(name string, d time.Duration) {
		if d < 0 {
			errs = append(errs, errors.New("outbox: "+name+" must not be negative"))
		}
	}
	neg("PushTimeout", c.PushTimeout)
	neg("ConnectTimeout", c.ConnectTimeout)
	neg("MaxBackoff", c.MaxBackoff)
	neg("PauseAfter", c.PauseAfter)
	neg("Retention", c.Retention)
	neg("DeliveredRetention", c.DeliveredRetention)
	neg("LeaseTimeout", c.LeaseTimeout)
	neg("MaxLongPoll", c.MaxLongPoll)
	neg("SweepInterval", c.SweepInterval)
	neg("LeaseTTL", c.LeaseTTL)
	if c.LeaseTTL > 0 && c.LeaseTTL < 3*time.Millisecond {
		errs = append(errs, errors.New("outbox: LeaseTTL must be at least 3ms"))
	}
	if c.MaxBackoff > 0 && c.MaxBackoff < time.Second {
		errs = append(errs, errors.New("outbox: MaxBackoff must be at least 1s"))
	}
	for name, n := range map[string]int{"Workers": c.Workers, "StreamConcurrency": c.StreamConcurrency,
		"SignAhead": c.SignAhead, "Signers": c.Signers, "MaxPollEvents": c.MaxPollEvents} {
		if n < 0 {
			errs = append(errs, errors.New("outbox: "+name+" must not be negative"))
		}
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.PushTimeout, 10*time.Second)
	def(&c.ConnectTimeout, 5*time.Second)
	def(&c.MaxBackoff, 10*time.Minute)
	def(&c.PauseAfter, 72*time.Hour)
	def(&c.Retention, 720*time.Hour)
	def(&c.DeliveredRetention, 72*time.Hour)
	def(&c.LeaseTimeout, 60*time.Second)
	def(&c.MaxLongPoll, 30*time.Second)
	def(&c.SweepInterval, time.Minute)
	def(&c.LeaseTTL, 15*time.Second)
	defN := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defN(&c.Workers, 64)
	defN(&c.StreamConcurrency, 1)
	defN(&c.SignAhead, 32)
	defN(&c.Signers, runtime.GOMAXPROCS(0))
	defN(&c.MaxPollEvents, 1000)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.After == nil {
		c.After = time.After
	}
	if c.Notifier == nil {
		c.Notifier = NewLocalNotifier()
	}
	if c.HolderID == "" {
		c.HolderID = randomHolderID()
	}
}

// randomHolderID names a lease holder: 12 random bytes, hex.
func randomHolderID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// LocalNotifier is the in-process Notifier: one channel per stream, closed
// by the next Notify.
type LocalNotifier struct {
	mu sync.Mutex
	ch map[string]chan struct{}
}

// NewLocalNotifier returns an empty in-process Notifier.
func NewLocalNotifier() *LocalNotifier {
	return &LocalNotifier{ch: make(map[string]chan struct{})}
}

// Notify wakes every waiter on the stream.
func (n *LocalNotifier) Notify(streamID string) {
	n.mu.Lock()
	if c, ok := n.ch[streamID]; ok {
		close(c)
		delete(n.ch, streamID)
	}
	n.mu.Unlock()
}

// Wait returns a channel closed by the next Notify for the stream.
func (n *LocalNotifier) Wait(streamID string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.ch[streamID]
	if !ok {
		c = make(chan struct{})
		n.ch[streamID] = c
	}
	return c
}
