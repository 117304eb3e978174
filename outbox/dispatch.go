package outbox

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// pending is a queue entry on its way through a push pipeline.
type pending struct {
	rec     *Record
	compact string
	signErr error
	signed  chan struct{} // closed once compact or signErr is set
	res     pushResult
}

// dispatch is the loop of one push stream: it waits for SETs (woken by the
// Notifier), for the end of a backoff, or for a status change, and runs
// the stream's pipeline while there is work.
func (o *Outbox) dispatch(ctx context.Context, st *streamState) {
	defer o.releaseLease(st)
	for ctx.Err() == nil {
		wake := o.cfg.Notifier.Wait(st.id)
		st.mu.Lock()
		cfg, gen, until, held := st.cfg, st.gen, st.until, st.held
		st.mu.Unlock()
		if held {
			o.sleep(ctx, wake, nil) // until the owner registers the new destination
			continue
		}
		if now := o.now(); cfg.Method == MethodPush && until.After(now) {
			o.sleep(ctx, wake, o.cfg.After(until.Sub(now)))
			continue
		}
		if cfg.Method != MethodPush || cfg.Status != StatusEnabled {
			if cfg.Method != MethodPush || !o.pushAnnouncement(ctx, st, cfg) {
				o.sleep(ctx, wake, nil)
			}
			continue
		}
		if !o.holdLease(ctx, st) {
			continue
		}
		st.headPending.Store(false)
		handled := false
		o.withHeartbeat(ctx, st, func(ctx context.Context) { handled = o.runPipeline(ctx, st, cfg, gen) })
		if !handled && !o.changedSince(st, cfg, gen) {
			o.sleep(ctx, wake, nil)
		}
	}
}

// changedSince reports whether the stream's configuration is no longer
// cfg of generation gen: a pipeline that stopped on a change adopted from
// the store loops at once (the change's wake-up may have come before it
// waited again), to deliver the announcement of a pause, say.
func (o *Outbox) changedSince(st *streamState, cfg StreamConfig, gen uint64) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cfg != cfg || st.gen != gen || st.held
}

// pushAnnouncement delivers the Announce SET at the head of a stream that
// is no longer enabled (one attempt). It reports whether it made an
// attempt: the dispatcher then loops, backing off after a failure.
func (o *Outbox) pushAnnouncement(ctx context.Context, st *streamState, cfg StreamConfig) bool {
	batch, _, changed, err := o.load(st, nil, 1)
	if changed {
		return true // changed through another replica: look again
	}
	if err != nil || len(batch) == 0 || !batch[0].rec.Announce {
		return false
	}
	if !o.holdLease(ctx, st) {
		return true // waited; look again
	}
	attempted := true
	o.withHeartbeat(ctx, st, func(ctx context.Context) { attempted = o.announce(ctx, st, cfg, batch[0]) })
	return attempted
}

// announce makes the one attempt of pushAnnouncement under the stream's
// lease, and records it.
func (o *Outbox) announce(ctx context.Context, st *streamState, cfg StreamConfig, p *pending) bool {
	token := st.token.Load()
	if !o.leaseCurrent(st) {
		return true
	}
	o.signOne(ctx, p)
	tp, end := o.startPush(p.rec, cfg)
	if p.signErr != nil {
		p.res = pushResult{out: outRetry, err: "sign: " + p.signErr.Error(), at: o.now()}
	} else {
		p.res = o.post(ctx, cfg, p.compact, tp)
	}
	if p.res.out == outRetry && ctx.Err() != nil {
		end(abortedAttempt(p.res))
		return false // shutting down: it stays queued
	}
	end(attemptOf(p.res))
	if h := o.cfg.Hooks.OnAttempt; h != nil {
		h(st.id, p.rec.JTI, p.rec.TraceParent, attemptOf(p.res))
	}
	if p.res.out == outRetry {
		o.fail(st, p.res)
	} else {
		o.succeed(st, p.res)
	}
	if err := o.commitBatch(st, token, []*pending{p}); err != nil {
		if errors.Is(err, ErrFenced) {
			o.refused(st, err)
			return true
		}
		o.log.Error("outbox record delivery", slog.String("stream_id", st.id), slog.Any("err", err))
		return false
	}
	return true
}

func (o *Outbox) sleep(ctx context.Context, wake <-chan struct{}, timer <-chan time.Time) {
	select {
	case <-ctx.Done():
	case <-wake:
	case <-timer:
	}
}

// runPipeline delivers the stream's queue in order: a reader loads SETs
// past its cursor and signs them in parallel ahead of the poster, which
// posts them in order; a committer records outcomes in group commits. It
// returns when an attempt backs the stream off, the stream's state
// changes, a Head SET arrives or ctx ends — after every outcome is
// committed, so the next run can start again from the head of the queue.
// It reports whether it handled anything.
func (o *Outbox) runPipeline(ctx context.Context, st *streamState, cfg StreamConfig, gen uint64) bool {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan *pending, o.cfg.SignAhead)
	go o.readAhead(pctx, st, cfg, gen, ready)

	results := make(chan *pending, 4*o.cfg.SignAhead)
	committed := make(chan struct{})
	token := st.token.Load()
	go func() {
		defer close(committed)
		o.commitLoop(st, token, results, cancel)
	}()
	defer func() {
		close(results)
		<-committed
	}()

	slots := make(chan struct{}, o.cfg.StreamConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	stop := false
	handled := false
	// attempt posts one SET and passes its outcome to the committer.
	attempt := func(p *pending) {
		tp, end := o.startPush(p.rec, cfg)
		if p.signErr != nil {
			p.res = pushResult{out: outRetry, err: "sign: " + p.signErr.Error(), at: o.now()}
		} else {
			p.res = o.post(pctx, cfg, p.compact, tp)
		}
		if p.res.out == outRetry && pctx.Err() != nil {
			end(abortedAttempt(p.res))
			return // aborted (shutdown, or a sibling failed): it stays queued
		}
		end(attemptOf(p.res))
		if h := o.cfg.Hooks.OnAttempt; h != nil {
			h(st.id, p.rec.JTI, p.rec.TraceParent, attemptOf(p.res))
		}
		if p.res.out == outRetry {
			mu.Lock()
			stop = true
			mu.Unlock()
			o.fail(st, p.res)
			cancel()
		} else {
			o.succeed(st, p.res)
		}
		results <- p
	}
	for p := range ready {
		handled = true
		select {
		case <-p.signed:
		case <-pctx.Done():
		}
		select {
		case slots <- struct{}{}:
		case <-pctx.Done():
		}
		mu.Lock()
		halt := stop
		mu.Unlock()
		if halt || pctx.Err() != nil || !o.stillCurrent(st, cfg, gen) || !o.leaseCurrent(st) {
			break
		}
		select {
		case o.workers <- struct{}{}:
		case <-pctx.Done():
		}
		if pctx.Err() != nil {
			break
		}
		if o.cfg.StreamConcurrency == 1 {
			// Strict order: one attempt at a time, on this goroutine.
			attempt(p)
			<-o.workers
			<-slots
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			defer func() { <-o.workers }()
			attempt(p)
		}()
	}
	cancel()
	wg.Wait()
	for range ready { // let the reader finish
	}
	return handled
}

// stillCurrent reports whether the pipeline may go on: the stream is still
// enabled with the same configuration of the same generation (changed
// here, or through another replica as the last transaction of this
// dispatcher found, or is about to find: see heartbeat), and no Head SET
// is waiting. The poster asks it before every attempt.
func (o *Outbox) stillCurrent(st *streamState, cfg StreamConfig, gen uint64) bool {
	if st.headPending.Load() || st.suspect.Load() {
		return false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cfg == cfg && st.gen == gen && !st.held && st.cfg.Status == StatusEnabled
}

// readAhead loads queued SETs past its cursor, signs each batch in
// parallel and hands them to the poster in order. Idle, it waits for the
// Notifier; it closes ready when the pipeline must stop.
func (o *Outbox) readAhead(ctx context.Context, st *streamState, cfg StreamConfig, gen uint64, ready chan<- *pending) {
	defer close(ready)
	var cursor []byte
	idleOnce := false
	for ctx.Err() == nil {
		wake := o.cfg.Notifier.Wait(st.id)
		if !o.stillCurrent(st, cfg, gen) {
			return
		}
		batch, next, _, err := o.load(st, cursor, o.cfg.SignAhead)
		if err != nil {
			// Back off rather than spin on a store that cannot be read.
			o.log.Error("outbox load queue", slog.String("stream_id", st.id), slog.Any("err", err))
			o.fail(st, pushResult{out: outRetry, err: "load queue: " + err.Error(), at: o.now()})
			return
		}
		if len(batch) == 0 {
			if !idleOnce && cursor == nil {
				return // nothing queued at all: let dispatch sleep
			}
			idleOnce = true
			select {
			case <-ctx.Done():
				return
			case <-wake:
				continue
			case <-st.adopted:
				continue // stillCurrent tells
			}
		}
		if !o.stillCurrent(st, cfg, gen) {
			return // changed through another replica, as its meta says
		}
		cursor = next
		// Sign each SET on its own goroutine (bounded by the signer cap,
		// whose waiters queue in order) and hand it over at once: the poster
		// waits for each signature in order, so signing never stalls on a
		// batch boundary.
		for _, p := range batch {
			p.signed = make(chan struct{})
			go func() {
				defer close(p.signed)
				o.signOne(ctx, p)
			}()
		}
		for _, p := range batch {
			select {
			case ready <- p:
			case <-ctx.Done():
				return
			}
		}
	}
}

// load is loadAfter for the stream's dispatcher: in the same read it
// takes the stream's meta, and adopts it into st when another replica
// changed the stream (changed).
func (o *Outbox) load(st *streamState, cursor []byte, n int) (batch []*pending, next []byte, changed bool, err error) {
	var m *streamMeta
	batch, next, err = o.loadMeta(st.id, cursor, n, &m)
	if err != nil {
		return nil, cursor, false, err
	}
	return batch, next, o.adopt(st, m), nil
}

// refresh reads the stream's meta alone and adopts it (see load).
func (o *Outbox) refresh(st *streamState) {
	var m *streamMeta
	err := o.store.view(func(tx kv.Tx) error {
		var err error
		m, err = getMeta(tx, st.id)
		return err
	})
	if err == nil {
		o.adopt(st, m)
	}
}

// loadAfter reads up to n queued records of a stream after cursor (nil:
// from the head) and returns the new cursor.
func (o *Outbox) loadAfter(stream string, cursor []byte, n int) ([]*pending, []byte, error) {
	return o.loadMeta(stream, cursor, n, nil)
}

// loadMeta is loadAfter that also reads the stream's meta into *meta
// (when meta is not nil) in the same transaction.
func (o *Outbox) loadMeta(stream string, cursor []byte, n int, meta **streamMeta) ([]*pending, []byte, error) {
	var out []*pending
	var last []byte
	err := o.store.view(func(tx kv.Tx) error {
		out, last = out[:0], nil
		if meta != nil {
			m, err := getMeta(tx, stream)
			if err != nil {
				return err
			}
			*meta = m
		}
		p := streamPrefix(stream)
		c := tx.Bucket(bktQueue).Cursor()
		var k, v []byte
		if cursor == nil {
			k, v = c.Seek(p)
		} else {
			k, v = c.Seek(cursor)
			if k != nil && string(k) == string(cursor) {
				k, v = c.Next()
			}
		}
		for ; k != nil && hasPrefix(k, p) && len(out) < n; k, v = c.Next() {
			last = append(last[:0], k...)
			r, err := getRecord(tx, string(v))
			if err != nil {
				return err
			}
			if r != nil {
				out = append(out, &pending{rec: r})
			}
		}
		return nil
	})
	if last == nil {
		last = cursor
	}
	return out, last, err
}

func (o *Outbox) signOne(ctx context.Context, p *pending) {
	select {
	case o.signers <- struct{}{}:
	case <-ctx.Done():
		p.signErr = ctx.Err()
		return
	}
	defer func() { <-o.signers }()
	p.compact, p.signErr = o.cfg.Signer.Sign(ctx, p.rec.Claims)
}

// commitLoop records outcomes as they come, each group in one transaction
// fenced by the dispatch lease's token. A refused group means the lease
// moved on: the pipeline is stopped (stop); outcomes still in flight are
// refused the same way, and the new holder delivers those SETs again.
// commitLinger is how long the committer waits for more outcomes once
// they come faster than it commits, up to commitLingerBatch of them: a
// backlog then costs one fsync per several SETs instead of one per one or
// two. At a trickle outcomes are committed at once.
const commitLinger = 2 * time.Millisecond

const commitLingerBatch = 32

// gatherer collects the outcomes one commit records.
type gatherer struct {
	linger time.Duration
	timer  *time.Timer
	busy   bool // the last batch held more than one outcome
}

func newGatherer(linger time.Duration) *gatherer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &gatherer{linger: linger, timer: t}
}

// gather returns first and every outcome already waiting; after a batch of
// more than one it also waits up to the linger for more, to at most
// commitLingerBatch (or until results is closed).
func (g *gatherer) gather(first *pending, results <-chan *pending) []*pending {
	batch := []*pending{first}
	lingering, expired := false, false
more:
	for len(batch) < 1024 {
		select {
		case q, ok := <-results:
			if !ok {
				break more
			}
			batch = append(batch, q)
			continue
		default:
		}
		if !g.busy || expired || len(batch) >= commitLingerBatch || g.linger <= 0 {
			break
		}
		if !lingering {
			lingering = true
			g.timer.Reset(g.linger)
		}
		select {
		case q, ok := <-results:
			if !ok {
				break more
			}
			batch = append(batch, q)
		case <-g.timer.C:
			expired = true
		}
	}
	if lingering && !expired {
		g.timer.Stop()
	}
	g.busy = len(batch) > 1
	return batch
}

func (o *Outbox) commitLoop(st *streamState, token uint64, results <-chan *pending, stop func()) {
	g := newGatherer(commitLinger)
	for p := range results {
		batch := g.gather(p, results)
		if err := o.commitBatch(st, token, batch); err != nil {
			if errors.Is(err, ErrFenced) {
				o.refused(st, err)
				stop()
				continue
			}
			o.log.Error("outbox record delivery", slog.String("stream_id", st.id), slog.Any("err", err))
		}
	}
}
