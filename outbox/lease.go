package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// Lease is a named, time-bounded, exclusive grant. Token is its fencing
// token: every acquisition by a new holder gets a higher one, and writes
// made on the lease's behalf carry it so the store can refuse those of a
// holder that has since lost it.
type Lease struct {
	Name    string
	Holder  string
	Token   uint64
	Expires time.Time
}

// Leases grants named leases with fencing tokens. The outbox uses one per
// push stream ("dispatch/<stream id>") so only one replica delivers a
// stream; cmd lends it to the tap for the event-API poller. StoreLeases is
// the bbolt implementation; a shared database backend implements the same
// behaviour (see the lease behaviour suite).
type Leases interface {
	// Acquire takes the lease for holder. A lease that is free, released,
	// expired or (bbolt) left by an earlier process gets a new, higher
	// token; the holder that already has it gets it extended with the same
	// token. Another holder's unexpired lease is ErrLeaseHeld.
	Acquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error)
	// Renew extends l by ttl from now. It is refused with ErrLeaseLost
	// unless l's holder still has the lease with l's token (an expired
	// lease nobody took over may still be renewed).
	Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// Release gives the lease up so another holder can take it at once.
	// Releasing a lease held by someone else is ErrLeaseLost.
	Release(ctx context.Context, l Lease) error
}

// Lease errors.
var (
	// ErrLeaseHeld: another holder has an unexpired lease.
	ErrLeaseHeld = errors.New("outbox: lease held by another holder")
	// ErrLeaseLost: the caller no longer holds the lease it names.
	ErrLeaseLost = errors.New("outbox: lease lost")
	// ErrFenced: a write carried a fencing token that is no longer
	// current; it was refused (see FenceError).
	ErrFenced = errors.New("outbox: stale fencing token")
)

// HeldError says who holds a lease that could not be acquired, and until
// when. It matches ErrLeaseHeld.
type HeldError struct {
	Name    string
	Holder  string
	Expires time.Time
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("outbox: lease %q held by %q until %s", e.Name, e.Holder, e.Expires.Format(time.RFC3339Nano))
}

// Is makes errors.Is(err, ErrLeaseHeld) hold.
func (e *HeldError) Is(target error) bool { return target == ErrLeaseHeld }

// FenceError is a write refused because its fencing token is stale: the
// lease was taken over (Current is the newer token) or released. It
// matches ErrFenced.
type FenceError struct {
	Name    string
	Token   uint64
	Current uint64
}

func (e *FenceError) Error() string {
	return fmt.Sprintf("outbox: lease %q: token %d is stale (current %d)", e.Name, e.Token, e.Current)
}

// Is makes errors.Is(err, ErrFenced) hold.
func (e *FenceError) Is(target error) bool { return target == ErrFenced }

// bktLeases holds the leases: name → leaseRecord (JSON). Its bucket
// sequence issues the fencing tokens, so they only ever grow, across
// names, releases and reopens.
var bktLeases = []byte("outbox.leases")

// leaseRecord is the stored state of one lease. Holder is empty once
// released; Token stays, so a released lease still fences its last holder.
type leaseRecord struct {
	Holder  string    `json:"holder,omitempty"`
	Token   uint64    `json:"token"`
	Expires time.Time `json:"expires,omitzero"`
	// Epoch is the store's open count when the lease was taken: bbolt is
	// held by one process at a time, so a lease of an earlier open has no
	// live holder and is free.
	Epoch uint64 `json:"epoch"`
}

// LeaseConfig configures StoreLeases.
type LeaseConfig struct {
	Store *Store
	// Clock measures leases on a backend without a clock of its own
	// (bbolt); a shared database's clock always wins. Default time.Now.
	Clock  func() time.Time
	Logger *slog.Logger // default discard
}

// Validate reports every problem of the configuration at once.
func (c LeaseConfig) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("outbox: lease Store is required"))
	}
	return errors.Join(errs...)
}

// StoreLeases implements Leases on the bbolt store, in its own bucket and
// through the store's group-commit writer.
type StoreLeases struct {
	store *Store
	now   func() time.Time
	log   *slog.Logger
}

// NewStoreLeases returns the bbolt lease implementation.
func NewStoreLeases(cfg LeaseConfig) (*StoreLeases, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &StoreLeases{store: cfg.Store, now: cfg.Clock, log: cfg.Logger}, nil
}

func checkLeaseArgs(name, holder string, ttl time.Duration) error {
	var errs []error
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		errs = append(errs, errors.New("lease name empty or with NUL"))
	}
	if holder == "" {
		errs = append(errs, errors.New("empty holder"))
	}
	if ttl <= 0 {
		errs = append(errs, errors.New("ttl must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("outbox: lease: %w", err)
	}
	return nil
}

// Acquire implements Leases.
func (l *StoreLeases) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error) {
	if err := checkLeaseArgs(name, holder, ttl); err != nil {
		return Lease{}, err
	}
	var got Lease
	var from string // the holder of an expired lease taken over
	err := l.store.update(ctx, func(tx kv.Tx) error {
		from = ""
		b, err := tx.CreateBucketIfNotExists(bktLeases)
		if err != nil {
			return err
		}
		now := l.clock(tx)
		rec, err := getLease(b, name)
		if err != nil {
			return err
		}
		switch {
		case rec != nil && rec.Holder == holder && rec.Epoch == l.store.epoch:
			// Ours already (expired or not): extend, same token. Nobody
			// took it over meanwhile, or the token would have moved on.
		case rec != nil && rec.Holder != "" && rec.Epoch == l.store.epoch && now.Before(rec.Expires):
			return &HeldError{Name: name, Holder: rec.Holder, Expires: rec.Expires}
		default:
			if rec != nil {
				from = rec.Holder
			}
			tok, err := b.NextSequence()
			if err != nil {
				return err
			}
			rec = &leaseRecord{Token: tok}
		}
		rec.Holder, rec.Expires, rec.Epoch = holder, now.Add(ttl), l.store.epoch
		got = Lease{Name: name, Holder: holder, Token: rec.Token, Expires: rec.Expires}
		return putLease(b, name, rec)
	})
	if err != nil {
		return Lease{}, err
	}
	if from != "" && from != holder {
		l.log.Info("outbox lease taken over", slog.String("lease", name), slog.String("from", from),
			slog.String("holder", holder), slog.Uint64("token", got.Token))
	}
	return got, nil
}

// Renew implements Leases.
func (l *StoreLeases) Renew(ctx context.Context, lease Lease, ttl time.Duration) (Lease, error) {
	if err := checkLeaseArgs(lease.Name, lease.Holder, ttl); err != nil {
		return Lease{}, err
	}
	var got Lease
	err := l.store.update(ctx, func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktLeases)
		if err != nil {
			return err
		}
		rec, err := getLease(b, lease.Name)
		if err != nil {
			return err
		}
		if !holds(rec, lease) || rec.Epoch != l.store.epoch {
			return fmt.Errorf("%w: %q (token %d)", ErrLeaseLost, lease.Name, lease.Token)
		}
		rec.Expires = l.clock(tx).Add(ttl)
		got = lease
		got.Expires = rec.Expires
		return putLease(b, lease.Name, rec)
	})
	if err != nil {
		return Lease{}, err
	}
	return got, nil
}

// Release implements Leases.
func (l *StoreLeases) Release(ctx context.Context, lease Lease) error {
	if lease.Name == "" || lease.Holder == "" {
		return fmt.Errorf("%w: empty lease name or holder", ErrLeaseLost)
	}
	return l.store.update(ctx, func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktLeases)
		if err != nil {
			return err
		}
		rec, err := getLease(b, lease.Name)
		if err != nil {
			return err
		}
		if !holds(rec, lease) {
			return fmt.Errorf("%w: %q (token %d)", ErrLeaseLost, lease.Name, lease.Token)
		}
		rec.Holder, rec.Expires = "", time.Time{}
		return putLease(b, lease.Name, rec)
	})
}

// Current returns the stored state of a lease (the zero Lease when it was
// never taken); a released lease has no Holder.
func (l *StoreLeases) Current(name string) (Lease, error) {
	var got Lease
	err := l.store.view(func(tx kv.Tx) error {
		b := tx.Bucket(bktLeases)
		if b == nil {
			return nil
		}
		rec, err := getLease(b, name)
		if err != nil || rec == nil {
			return err
		}
		got = Lease{Name: name, Holder: rec.Holder, Token: rec.Token, Expires: rec.Expires}
		return nil
	})
	return got, err
}

// clock is the time leases are measured on: the backend's own clock when
// it has one every process agrees on (a database's now()), else the
// configured one.
func (l *StoreLeases) clock(tx kv.Tx) time.Time { return leaseClock(tx, l.now) }

// holds reports whether rec is l, still held by l's holder with l's token.
func holds(rec *leaseRecord, l Lease) bool {
	return rec != nil && rec.Holder != "" && rec.Holder == l.Holder && rec.Token == l.Token
}

// checkFence refuses a write on behalf of lease name with a token that is
// no longer current (taken over, or released). It runs inside the write's
// own transaction, so the check and the write are one step.
func checkFence(tx kv.Tx, name string, token uint64) error {
	var rec *leaseRecord
	if b := tx.Bucket(bktLeases); b != nil {
		var err error
		if rec, err = getLease(b, name); err != nil {
			return err
		}
	}
	if rec == nil || rec.Holder == "" || rec.Token != token {
		cur := uint64(0)
		if rec != nil {
			cur = rec.Token
		}
		return &FenceError{Name: name, Token: token, Current: cur}
	}
	return nil
}

// Fence checks, outside any write, whether token is still current for the
// lease name on this store (nil if so, a *FenceError if not). Writes that
// must be fenced check inside their own transaction instead.
func (s *Store) Fence(name string, token uint64) error {
	return s.view(func(tx kv.Tx) error { return checkFence(tx, name, token) })
}

func getLease(b kv.Bucket, name string) (*leaseRecord, error) {
	v := b.Get([]byte(name))
	if v == nil {
		return nil, nil
	}
	var rec leaseRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("outbox: lease %q: %w", name, err)
	}
	return &rec, nil
}

func putLease(b kv.Bucket, name string, rec *leaseRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put([]byte(name), v)
}
