package outbox

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// dispatchLeaseName is the lease a push stream's dispatcher holds while it
// delivers the stream.
func dispatchLeaseName(streamID string) string { return "dispatch/" + streamID }

// holdLease makes sure the dispatcher holds its stream's dispatch lease,
// taking or renewing it when LeaseTTL/3 has passed since the last time (so
// the store sees at most one lease write per stream per LeaseTTL/3, not
// one per SET; while the stream delivers, the heartbeat renews it). Dispatcher goroutine only. When it reports false it has
// already waited — until the other holder's lease ends, or a while after
// a store error — and the caller loops.
func (o *Outbox) holdLease(ctx context.Context, st *streamState) bool {
	now := o.now()
	held := st.lease.Token != 0 && !st.lost.Load()
	if held && now.Before(st.renewAt) && o.leaseCurrent(st) {
		return true
	}
	var l Lease
	var err error
	if held {
		l, err = o.leases.Renew(ctx, st.lease, o.cfg.LeaseTTL)
		if errors.Is(err, ErrLeaseLost) {
			o.log.Warn("outbox dispatch lease lost", slog.String("stream_id", st.id),
				slog.Uint64("token", st.lease.Token))
			held = false
		}
	}
	if !held {
		l, err = o.leases.Acquire(ctx, dispatchLeaseName(st.id), o.cfg.HolderID, o.cfg.LeaseTTL)
	}
	if err == nil {
		if l.Token != st.lease.Token || st.lost.Load() {
			o.log.Info("outbox dispatch lease taken", slog.String("stream_id", st.id),
				slog.Uint64("token", l.Token))
		}
		st.lease, st.renewAt = l, now.Add(o.cfg.LeaseTTL/3)
		st.validTo.Store(now.Add(o.cfg.LeaseTTL).UnixNano())
		st.token.Store(l.Token)
		st.lost.Store(false)
		return true
	}
	st.lease = Lease{}
	st.token.Store(0)
	if ctx.Err() != nil {
		return false
	}
	var he *HeldError
	if errors.As(err, &he) {
		// Another replica delivers this stream: wait for its lease to end
		// (it renews while it works, so this is a standby's slow retry).
		// New SETs do not wake us, so a standby never writes per SET.
		o.log.Debug("outbox dispatch lease held elsewhere", slog.String("stream_id", st.id),
			slog.Time("until", he.Expires))
		d := min(max(he.Expires.Sub(now), time.Millisecond), o.cfg.LeaseTTL)
		o.sleep(ctx, nil, o.cfg.After(d))
		return false
	}
	o.log.Error("outbox dispatch lease", slog.String("stream_id", st.id), slog.Any("err", err))
	o.sleep(ctx, nil, o.cfg.After(o.cfg.LeaseTTL/3))
	return false
}

// leaseCurrent is the pipeline's check before each attempt: the lease was
// neither found stale by a write or a renewal, nor left unrenewed for its
// whole lifetime (measured from before the request that last took or
// renewed it, on this process's clock). The heartbeat renews it.
func (o *Outbox) leaseCurrent(st *streamState) bool {
	if st.lost.Load() || st.token.Load() == 0 {
		return false
	}
	return o.now().UnixNano() < st.validTo.Load()
}

// heartbeat renews the stream's dispatch lease every LeaseTTL/3 while a
// pipeline or an announcement attempt runs, so an attempt may last longer
// than the lease (LeaseTTL is the failover time, not a bound on
// attempts). Every renewal is fenced: it succeeds only while this holder
// still has the lease with its token. When the lease is lost, or no
// renewal succeeded for the lease's whole lifetime (the store cannot be
// reached), it calls stop: the holder stops attempting, and the outcomes
// of attempts still in flight are refused by their fence if another
// holder took over. It owns st.lease and st.renewAt until it returns.
//
// It also watches the stream's configuration: woken by a change made
// through any replica (change, the Notifier's channel of changeKey), and
// after every renewal, it reads the stream's meta and adopts it, so the
// pipeline stops before its next attempt (see stillCurrent) rather than at
// its next transaction. From the wake-up on, the pipeline makes no attempt
// (a wake-up with no change behind it costs one restart of the pipeline).
func (o *Outbox) heartbeat(ctx context.Context, st *streamState, stop func(), change <-chan struct{}) {
	ttl := o.cfg.LeaseTTL
	for {
		select {
		case <-ctx.Done():
			return
		case <-change:
			// The pipeline stops at its next attempt already: the read
			// takes a round trip or three, in which a fast receiver would
			// take several SETs.
			st.suspect.Store(true)
			change = o.cfg.Notifier.Wait(changeKey(st.id))
			o.refresh(st)
			st.suspect.Store(false)
			continue
		case <-o.heartbeatAfter(st.renewAt.Sub(o.now())):
		}
		sent := o.now()
		rctx, cancel := context.WithTimeout(ctx, ttl/3)
		l, err := o.leases.Renew(rctx, st.lease, ttl)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			st.lease, st.renewAt = l, sent.Add(ttl/3)
			st.validTo.Store(sent.Add(ttl).UnixNano())
			o.refresh(st) // in case a change's wake-up was missed
			continue
		case errors.Is(err, ErrLeaseLost):
			o.log.Warn("outbox dispatch lease lost", slog.String("stream_id", st.id),
				slog.Uint64("token", st.lease.Token))
			st.lost.Store(true)
			stop()
			return
		}
		if !o.leaseCurrent(st) {
			o.log.Error("outbox dispatch lease could not be renewed in time: stopping the stream's delivery",
				slog.String("stream_id", st.id), slog.Any("err", err))
			stop()
			return
		}
		o.log.Warn("outbox dispatch lease renewal failed", slog.String("stream_id", st.id),
			slog.Uint64("token", st.lease.Token), slog.Any("err", err))
		st.renewAt = o.now().Add(ttl / 10) // try again before the lease ends
	}
}

// withHeartbeat runs fn with ctx while the heartbeat renews the stream's
// lease; fn's context ends when the heartbeat gives the lease up. The
// heartbeat has stopped when it returns.
func (o *Outbox) withHeartbeat(ctx context.Context, st *streamState, fn func(ctx context.Context)) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Waiting from before fn starts, so no change after fn's first read
	// goes unheard.
	change := o.cfg.Notifier.Wait(changeKey(st.id))
	done := make(chan struct{})
	go func() {
		defer close(done)
		o.heartbeat(hctx, st, cancel, change)
	}()
	defer func() { <-done }()
	defer cancel()
	fn(hctx)
}

// releaseLease gives the stream's lease up when its dispatcher stops, so
// another replica can take the stream over at once. Dispatcher goroutine
// only, after its last outcome was committed.
func (o *Outbox) releaseLease(st *streamState) {
	l := st.lease
	st.lease = Lease{}
	st.token.Store(0)
	if l.Token == 0 || st.lost.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := o.leases.Release(ctx, l); err != nil && !errors.Is(err, ErrStoreClosed) {
		o.log.Debug("outbox dispatch lease release", slog.String("stream_id", st.id), slog.Any("err", err))
	}
}

// refused records a write refused for a stale fencing token: counted,
// logged, and the dispatcher is told its lease is gone.
func (o *Outbox) refused(st *streamState, err error) {
	var fe *FenceError
	if !errors.As(err, &fe) {
		return
	}
	st.lost.Store(true)
	o.fenced.Add(1)
	o.log.Warn("outbox delivery outcome refused: the dispatch lease moved on",
		slog.String("stream_id", st.id), slog.Uint64("token", fe.Token), slog.Uint64("current", fe.Current))
	if h := o.cfg.Hooks.OnFenced; h != nil {
		h(st.id, fe.Token, fe.Current)
	}
}

// Fenced counts delivery outcomes and pause reports refused since start
// because the dispatcher that made them no longer held its stream's lease.
func (o *Outbox) Fenced() int64 { return o.fenced.Load() }

// DispatchLease returns the stored state of a stream's dispatch lease (the
// zero Lease when no dispatcher has taken it).
func (o *Outbox) DispatchLease(streamID string) (Lease, error) {
	return (&StoreLeases{store: o.store}).Current(dispatchLeaseName(streamID))
}
