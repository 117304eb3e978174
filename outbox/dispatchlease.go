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
// one per SET). Dispatcher goroutine only. When it reports false it has
// already waited — until the other holder's lease ends, or a while after
// a store error — and the caller loops.
func (o *Outbox) holdLease(ctx context.Context, st *streamState) bool {
	now := o.now()
	held := st.lease.Token != 0 && !st.lost.Load()
	if held && now.Before(st.renewAt) {
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
// not found stale by a write, and is renewed when due. Dispatcher
// goroutine only.
func (o *Outbox) leaseCurrent(ctx context.Context, st *streamState) bool {
	if st.lost.Load() || st.lease.Token == 0 {
		return false
	}
	if o.now().Before(st.renewAt) {
		return true
	}
	l, err := o.leases.Renew(ctx, st.lease, o.cfg.LeaseTTL)
	if err != nil {
		if ctx.Err() == nil {
			o.log.Warn("outbox dispatch lease renewal failed", slog.String("stream_id", st.id),
				slog.Uint64("token", st.lease.Token), slog.Any("err", err))
		}
		if errors.Is(err, ErrLeaseLost) {
			st.lost.Store(true)
		}
		return false
	}
	st.lease, st.renewAt = l, o.now().Add(o.cfg.LeaseTTL/3)
	return true
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
