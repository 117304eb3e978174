package ssf

import (
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// Event type URIs.
const (
	caepBase = "https://schemas.openid.net/secevent/caep/event-type/"
	riscBase = "https://schemas.openid.net/secevent/risc/event-type/"
	ssfBase  = "https://schemas.openid.net/secevent/ssf/event-type/"

	EventSessionRevoked     = caepBase + "session-revoked"
	EventSessionEstablished = caepBase + "session-established"
	EventCredentialChange   = caepBase + "credential-change"
	EventAccountDisabled    = riscBase + "account-disabled"
	EventAccountEnabled     = riscBase + "account-enabled"
	EventAccountPurged      = riscBase + "account-purged"
	EventIdentifierChanged  = riscBase + "identifier-changed"
	EventVerification       = ssfBase + "verification"
	EventStreamUpdated      = ssfBase + "stream-updated"
)

// Delivery method URIs.
const (
	MethodPushURN    = "urn:ietf:rfc:8935"
	MethodPollURN    = "urn:ietf:rfc:8936"
	MethodRISCPush   = "https://schemas.openid.net/secevent/risc/delivery-method/push"
	legacyPollMethod = "https://schemas.openid.net/secevent/risc/delivery-method/poll"
)

// kindEvent maps each signal kind to the one event type it produces.
var kindEvent = map[tap.Kind]string{
	tap.KindSessionRevoked:     EventSessionRevoked,
	tap.KindSessionEstablished: EventSessionEstablished,
	tap.KindPasswordChanged:    EventCredentialChange,
	tap.KindMFAAdded:           EventCredentialChange,
	tap.KindMFARemoved:         EventCredentialChange,
	tap.KindAccountDisabled:    EventAccountDisabled,
	tap.KindAccountEnabled:     EventAccountEnabled,
	tap.KindAccountDeleted:     EventAccountPurged,
	tap.KindEmailChanged:       EventIdentifierChanged,
}

// SupportedEvents lists every event type the mapping can produce, in a
// stable order. Verification and stream-updated are always sent besides.
var SupportedEvents = []string{
	EventSessionRevoked, EventCredentialChange, EventSessionEstablished,
	EventAccountDisabled, EventAccountEnabled, EventAccountPurged, EventIdentifierChanged,
}

// defaultReasons is the reason_admin used when the signal carries none
// (the interoperability profile requires a non-empty one for
// session-revoked and credential-change).
var defaultReasons = map[tap.Kind]string{
	tap.KindSessionRevoked:     "The session was ended in authentik",
	tap.KindSessionEstablished: "A session was established in authentik",
	tap.KindPasswordChanged:    "The password was changed in authentik",
	tap.KindMFAAdded:           "An authenticator was added in authentik",
	tap.KindMFARemoved:         "An authenticator was removed in authentik",
	tap.KindAccountDisabled:    "The account was deactivated in authentik",
	tap.KindAccountEnabled:     "The account was activated in authentik",
	tap.KindAccountDeleted:     "The account was deleted in authentik",
	tap.KindEmailChanged:       "The email address was changed in authentik",
}

// CredentialType maps an authentik device type to CAEP's credential_type.
// Static recovery codes and email one-time codes have no CAEP value of
// their own: both are reported as "app" (a one-time code the user types),
// with the device name in friendly_name.
func CredentialType(d *tap.Device) string {
	if d == nil {
		return "app"
	}
	switch d.Type {
	case "webauthn":
		if d.Platform {
			return "fido2-platform"
		}
		return "fido2-roaming"
	case "sms":
		return "phone-sms"
	case "password":
		return "password"
	default: // totp, duo, static, email, endpoint
		return "app"
	}
}

// initiator is the CAEP initiating_entity for the signal.
func initiator(s tap.Signal) string {
	switch s.Initiator {
	case tap.InitiatorUser, tap.InitiatorAdmin, tap.InitiatorSystem, tap.InitiatorPolicy:
		return string(s.Initiator)
	}
	switch {
	case s.Actor == nil:
		return string(tap.InitiatorSystem)
	case sameUser(*s.Actor, s.Subject):
		return string(tap.InitiatorUser)
	default:
		return string(tap.InitiatorAdmin)
	}
}

func sameUser(a, b tap.User) bool {
	switch {
	case a.PK != 0 && b.PK != 0:
		return a.PK == b.PK
	case a.UID != "" && b.UID != "":
		return a.UID == b.UID
	default:
		return a.Username != "" && a.Username == b.Username
	}
}

// eventBody builds the event object (without the legacy subject) for the
// signal. ok is false for a kind the mapping does not know.
func eventBody(s tap.Signal) (eventType string, body map[string]any, ok bool) {
	eventType, ok = kindEvent[s.Kind]
	if !ok {
		return "", nil, false
	}
	body = map[string]any{}
	if !s.Time.IsZero() {
		body["event_timestamp"] = s.Time.Unix()
	}
	if eventType == EventSessionRevoked || eventType == EventCredentialChange || eventType == EventSessionEstablished {
		body["initiating_entity"] = initiator(s)
		reason := s.ReasonAdmin
		if reason == "" {
			reason = defaultReasons[s.Kind]
		}
		body["reason_admin"] = map[string]string{"en": reason}
		if s.ReasonUser != "" {
			body["reason_user"] = map[string]string{"en": s.ReasonUser}
		}
	}
	switch s.Kind {
	case tap.KindPasswordChanged:
		body["credential_type"] = "password"
		body["change_type"] = "update"
		if s.Revoked {
			body["change_type"] = "revoke" // the password was made unusable
		}
	case tap.KindMFAAdded, tap.KindMFARemoved:
		body["credential_type"] = CredentialType(s.Device)
		body["change_type"] = "create"
		if s.Kind == tap.KindMFARemoved {
			body["change_type"] = "delete"
		}
		if s.Device != nil {
			if s.Device.Name != "" {
				body["friendly_name"] = s.Device.Name
			}
			if s.Device.AAGUID != "" && s.Device.Type == "webauthn" {
				body["fido2_aaguid"] = s.Device.AAGUID
			}
		}
	case tap.KindEmailChanged:
		if s.NewEmail != "" {
			body["new-value"] = s.NewEmail
		}
	}
	return eventType, body, true
}

// subjectFor builds the sub_id a receiver gets for the signal, in its
// subject format. ok is false when the signal lacks what that format needs.
func subjectFor(r *Receiver, s tap.Signal) (Subject, bool) {
	if s.Kind == tap.KindEmailChanged {
		// RISC identifier-changed: the subject is the old identifier.
		if s.OldEmail == "" {
			return Subject{}, false
		}
		return EmailSubject(s.OldEmail), true
	}
	user, ok := userSubject(r, s.Subject)
	if !ok {
		return Subject{}, false
	}
	if r.SubjectFormat != SubjectFormatComplex {
		return user, true
	}
	c := Subject{Format: "complex", Members: map[string]Subject{"user": user}}
	if sess := sessionID(s); sess != "" {
		c.Members["session"] = OpaqueSubject(sess)
	}
	return c, true
}

func userSubject(r *Receiver, u tap.User) (Subject, bool) {
	switch {
	case r.SubjectFormat == SubjectFormatIssSub && u.UID != "":
		return IssSubSubject(r.SubjectIss, u.UID), true
	case r.SubjectFormat == SubjectFormatComplex && r.SubjectIss != "" && u.UID != "":
		return IssSubSubject(r.SubjectIss, u.UID), true
	case r.SubjectFormat != SubjectFormatIssSub && u.Email != "":
		return EmailSubject(u.Email), true
	}
	return Subject{}, false
}

func sessionID(s tap.Signal) string {
	if s.SessionHash != "" {
		return s.SessionHash
	}
	return s.SessionUUID
}

// matchSubject is the signal's subject as used for subject matching: the
// user under every identifier the receiver could name it by, and the
// session when known.
func matchSubject(r *Receiver, s tap.Signal) Subject {
	var ids []Subject
	for _, e := range []string{s.Subject.Email, s.OldEmail} {
		if e != "" {
			ids = append(ids, EmailSubject(e))
		}
	}
	if s.Subject.UID != "" && r.SubjectIss != "" {
		ids = append(ids, IssSubSubject(r.SubjectIss, s.Subject.UID))
	}
	c := Subject{Format: "complex", Members: map[string]Subject{}}
	if len(ids) > 0 {
		c.Members["user"] = Subject{Format: "aliases", Identifiers: ids}
	}
	if sess := sessionID(s); sess != "" {
		c.Members["session"] = OpaqueSubject(sess)
	}
	return c
}
