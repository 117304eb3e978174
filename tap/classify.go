package tap

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
)

// initiator says who started an action on subject.
func initiator(actor, subject User) Initiator {
	if actor.PK != 0 && subject.PK != 0 && actor.PK != subject.PK {
		return InitiatorAdmin
	}
	return InitiatorUser
}

// classify turns a completed intent into signals. Each signal's ID is
// derived from the intent id, so a replay yields the same IDs.
func (t *Tap) classify(ctx context.Context, in *intent, source Source) []Signal {
	actor := in.Caller
	base := func(suffix string, kind Kind, subject User) Signal {
		a := actor
		s := Signal{
			ID: "t:" + in.ID + suffix, Kind: kind, Source: source, Time: in.Done, Subject: subject,
			Actor: &a, Initiator: initiator(actor, subject), RequestID: in.RequestID, TraceParent: in.TraceParent,
		}
		if s.Time.IsZero() {
			s.Time = in.Created
		}
		return s
	}
	switch in.Op {
	case opLogout:
		if in.Unconfirmed && !t.logoutRecorded(ctx, in) {
			return nil // a stale cookie: authentik logged out AnonymousUser
		}
		s := base("", KindSessionRevoked, in.Subject)
		s.SessionHash = in.SessionHash
		s.ReasonAdmin, s.ReasonUser = "User logged out", "You logged out"
		if in.Via != "" {
			s.ReasonAdmin = "User logged out through " + in.Via
		}
		return []Signal{s}
	case opFlowStage:
		// A prompt may write the email too (user-settings flows).
		var out []Signal
		if in.After.Email != "" {
			out = userChangeSignals(in.Before, in.After, func(suffix string, kind Kind) Signal {
				return base(suffix, kind, in.Subject)
			})
			if len(out) > 0 {
				t.dir.noteEmail(in.Subject.PK, in.After.Email)
			}
		}
		switch in.Stage {
		case stagePassword:
			s := base("", KindPasswordChanged, in.Subject)
			s.ReasonAdmin, s.ReasonUser = "User changed their password", "You changed your password"
			return append([]Signal{s}, out...)
		case stageEmail:
			return out
		case stageMFA:
			s := base("", KindMFAAdded, in.Subject)
			s.Device = t.enrolledDevice(ctx, in)
			s.ReasonAdmin, s.ReasonUser = "User enrolled an authenticator", "You added an authenticator"
			return []Signal{s}
		}
	case opSessionDelete, opSessionBulk:
		var out []Signal
		for _, ref := range in.Sessions {
			s := base("/"+ref.UUID, KindSessionRevoked, ref.Owner)
			s.SessionUUID, s.SessionHash = ref.UUID, ref.Hash
			s.ReasonAdmin, s.ReasonUser = "Session revoked", "Your session was ended"
			out = append(out, s)
		}
		for _, u := range in.BulkUsers {
			s := base("/u"+strconv.FormatInt(u.PK, 10), KindSessionRevoked, u)
			s.ReasonAdmin, s.ReasonUser = "All sessions revoked", "Your sessions were ended"
			out = append(out, s)
		}
		return out
	case opSetPassword:
		s := base("", KindPasswordChanged, in.Subject)
		s.ReasonAdmin, s.ReasonUser = "Password set through the API", "Your password was changed"
		if s.Initiator == InitiatorAdmin {
			s.ReasonAdmin, s.ReasonUser = "An administrator set the user's password", "An administrator changed your password"
		}
		return []Signal{s}
	case opUserUpdate:
		out := userChangeSignals(in.Before, in.After, func(suffix string, kind Kind) Signal {
			return base(suffix, kind, in.Subject)
		})
		if in.Before.IsActive && in.After.Known && !in.After.IsActive {
			out = append(out, endedSessions(in, base, "the account was disabled")...)
		}
		return out
	case opUserDelete:
		s := base("", KindAccountDeleted, in.Subject)
		s.ReasonAdmin, s.ReasonUser = "Account deleted", "Your account was deleted"
		t.dir.forgetUser(in.Subject.PK)
		return append([]Signal{s}, endedSessions(in, base, "the account was deleted")...)
	case opDeviceDelete:
		s := base("", KindMFARemoved, in.Subject)
		s.Device = in.Device
		s.ReasonAdmin, s.ReasonUser = "Authenticator removed", "An authenticator was removed from your account"
		return []Signal{s}
	}
	return nil
}

// logoutRecorded reports whether authentik's event log holds a logout of
// the intent's user made by the request authentik answered (its
// X-authentik-id). A cookie whose session had already ended runs the logout
// stage as AnonymousUser, and its logout names AnonymousUser. When there is
// no request id to look for, or the event API cannot be read, the logout
// counts (a real logout lost is worse than a repeated one).
func (t *Tap) logoutRecorded(ctx context.Context, in *intent) bool {
	if in.AuthentikID == "" || in.Subject.Username == "" {
		return true
	}
	q := url.Values{"action": {"logout"}, "username": {in.Subject.Username}, "ordering": {"-created"}, "page_size": {"20"}}
	var raw json.RawMessage
	if err := t.api.getJSON(ctx, t.api.tokenCreds(), "/events/events/", q, &raw); err != nil {
		t.log.InfoContext(ctx, "tap: could not confirm a logout", "request_id", in.AuthentikID, "err", err)
		return true
	}
	page, err := decodeEventPage(raw)
	if err != nil {
		return true
	}
	for _, e := range page.Events {
		if e.Action == "logout" && e.User.PK == in.Subject.PK && e.Context.HTTPRequest != nil &&
			strings.ReplaceAll(e.Context.HTTPRequest.RequestID, "-", "") == strings.ReplaceAll(in.AuthentikID, "-", "") {
			return true
		}
	}
	t.stats.staleLogouts.Add(1)
	return false
}

// userChangeSignals compares a user's state before and after a change.
func userChangeSignals(before, after userState, mk func(suffix string, kind Kind) Signal) []Signal {
	var out []Signal
	if before.Known && after.Known && before.IsActive != after.IsActive {
		if after.IsActive {
			s := mk("/enabled", KindAccountEnabled)
			s.ReasonAdmin, s.ReasonUser = "Account enabled", "Your account was enabled"
			out = append(out, s)
		} else {
			s := mk("/disabled", KindAccountDisabled)
			s.ReasonAdmin, s.ReasonUser = "Account disabled", "Your account was disabled"
			out = append(out, s)
		}
	}
	if before.Email != "" && after.Email != before.Email {
		s := mk("/email", KindEmailChanged)
		s.Subject.Email = before.Email
		s.OldEmail, s.NewEmail = before.Email, after.Email
		s.ReasonAdmin, s.ReasonUser = "Email address changed", "Your email address was changed"
		out = append(out, s)
	}
	return out
}

// enrolledDevice finds the device an enrolment just confirmed: the user's
// newest confirmed device of that type (needs the token; otherwise only the
// type is known).
func (t *Tap) enrolledDevice(ctx context.Context, in *intent) *Device {
	dev := &Device{Type: in.Device.Type}
	if t.cfg.Token == "" {
		return dev
	}
	devs, err := t.api.userDevices(ctx, in.Subject.PK)
	if err != nil {
		return dev
	}
	var best akDevice
	var bestPK int64 = -1
	for _, d := range devs {
		if !deviceTypeMatches(d.Type, in.Device.Type) || (d.Confirmed != nil && !*d.Confirmed) {
			continue
		}
		if n, err := strconv.ParseInt(d.pk(), 10, 64); err == nil && n > bestPK {
			best, bestPK = d, n
		}
	}
	if bestPK < 0 {
		return dev
	}
	out := deviceFrom(in.Device.Type, best)
	t.dir.putDevice(out.Type, out.PK, dirDevice{Owner: in.Subject.PK, Confirmed: true, Name: best.Name})
	return out
}

// deviceTypeMatches compares the "all" endpoint's type (for example
// "authentik_stages_authenticator_totp.TOTPDevice" or "totp") with a short
// device type.
func deviceTypeMatches(long, short string) bool {
	if short == "endpoint" {
		// authentik_stages_authenticator_endpoint_gdtc.EndpointDevice
		return long == short || containsFold(long, "authenticator_endpoint_gdtc.")
	}
	return long == short || containsFold(long, "authenticator_"+short+".")
}

// endedSessions reports the sessions authentik deleted along with an
// account change (it records no event for them).
func endedSessions(in *intent, base func(string, Kind, User) Signal, why string) []Signal {
	var out []Signal
	for _, ref := range in.Sessions {
		s := base("/s/"+ref.UUID, KindSessionRevoked, ref.Owner)
		s.SessionUUID, s.SessionHash = ref.UUID, ref.Hash
		s.ReasonAdmin, s.ReasonUser = "Session ended because "+why, "Your session ended because "+why
		out = append(out, s)
	}
	return out
}
