package sidecar

import (
	"context"
	"errors"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// pollerLease adapts the store's leases to the tap's poller lease: only the
// holder reads authentik's event API.
type pollerLease struct{ leases outbox.Leases }

func (p pollerLease) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (uint64, bool, error) {
	l, err := p.leases.Acquire(ctx, name, holder, ttl)
	if errors.Is(err, outbox.ErrLeaseHeld) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return l.Token, true, nil
}

func (p pollerLease) Release(ctx context.Context, name, holder string, token uint64) error {
	return p.leases.Release(ctx, outbox.Lease{Name: name, Holder: holder, Token: token})
}
