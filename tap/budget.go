package tap

import (
	"context"
	"strconv"
)

// Look-ups at authentik are what a tapped request costs beyond itself, so
// they are budgeted, but never at the price of an observation:
//
//   - Deciding locally comes first and costs nothing: a malformed cookie, a
//     cookie verified with the secret key, a token identity authentik
//     confirmed recently, or a credential authentik refused recently.
//   - A look-up is charged to its key (the client IP for an unconfirmed
//     caller, "user:<pk>" for a confirmed caller whose tapped actions
//     authentik refuses) only when it failed, after the fact. A confirmed
//     caller never spends anyone's budget.
//   - A key whose budget is empty is not dropped: its look-ups are held and
//     run one at a time across all such keys, within the request's own
//     before-bound (counted in RateLimited). So junk from one address slows
//     only other junk, and an admin sharing that address is still observed.

// userBudgetKey is the budget key of a confirmed caller.
func userBudgetKey(pk int64) string { return "user:" + strconv.FormatInt(pk, 10) }

// admitLookup lets a look-up for key go on at once while key has budget,
// else holds it for the shared over-budget slot. The returned release must
// be called when the look-ups are done.
func (t *Tap) admitLookup(ctx context.Context, key string) (release func(), err error) {
	if key == "" || t.limiter.has(key) {
		return func() {}, nil
	}
	t.stats.rateLimited.Add(1)
	select {
	case t.overBudget <- struct{}{}:
		return func() { <-t.overBudget }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type budgetCtxKey struct{}

// withBudgetKey names the key a caller's look-ups are charged to.
func withBudgetKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, budgetCtxKey{}, key)
}

func budgetKeyOf(ctx context.Context) string {
	k, _ := ctx.Value(budgetCtxKey{}).(string)
	return k
}
