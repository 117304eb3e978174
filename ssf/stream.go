package ssf

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// Stream statuses (SSF §8.1.2).
const (
	StatusEnabled  = "enabled"
	StatusPaused   = "paused"
	StatusDisabled = "disabled"
)

// StreamRecord is a stream as a StreamStore persists it. AuthorizationHeader
// is a secret: a StreamStore keeps it sealed, and the package hands it only
// to the outbox (never to a receiver, a log or an error).
type StreamRecord struct {
	ID                  string    `json:"id"`
	Receiver            string    `json:"receiver"`
	Audience            string    `json:"aud"`
	EventsRequested     []string  `json:"events_requested"`
	Method              string    `json:"method"` // the delivery method URI as the receiver gave it
	EndpointURL         string    `json:"endpoint_url,omitempty"`
	AuthorizationHeader string    `json:"authorization_header,omitempty"`
	Description         string    `json:"description,omitempty"`
	Status              string    `json:"status"`
	Reason              string    `json:"reason,omitempty"`
	DefaultSubjects     string    `json:"default_subjects"`
	Created             time.Time `json:"created"`
	Updated             time.Time `json:"updated"`
	LastVerification    time.Time `json:"last_verification,omitzero"`
}

func (r StreamRecord) push() bool { return r.Method != MethodPollURN && r.Method != legacyPollMethod }

func (r StreamRecord) outboxConfig() outbox.StreamConfig {
	c := outbox.StreamConfig{ID: r.ID, Method: outbox.MethodPoll, Status: outbox.Status(r.Status)}
	if r.push() {
		c.Method, c.EndpointURL, c.AuthorizationHeader = outbox.MethodPush, r.EndpointURL, r.AuthorizationHeader
	}
	return c
}

// delivered is events_delivered: supported ∩ requested, in supported order.
func delivered(requested []string) []string {
	out := []string{}
	for _, e := range SupportedEvents {
		if slices.Contains(requested, e) {
			out = append(out, e)
		}
	}
	return out
}

// streamWire is the stream configuration as SSF §8.1.1 shows it to the
// receiver. It has no field for the authorization header.
type streamWire struct {
	StreamID                string       `json:"stream_id"`
	Iss                     string       `json:"iss"`
	Aud                     string       `json:"aud"`
	EventsSupported         []string     `json:"events_supported"`
	EventsRequested         []string     `json:"events_requested"`
	EventsDelivered         []string     `json:"events_delivered"`
	Delivery                deliveryWire `json:"delivery"`
	MinVerificationInterval int64        `json:"min_verification_interval"`
	Description             string       `json:"description,omitempty"`
}

type deliveryWire struct {
	Method      string `json:"method"`
	EndpointURL string `json:"endpoint_url,omitempty"`
}

func (t *Transmitter) wire(r StreamRecord) streamWire {
	req := r.EventsRequested
	if req == nil {
		req = []string{}
	}
	return streamWire{
		StreamID: r.ID, Iss: t.cfg.Issuer, Aud: r.Audience,
		EventsSupported: SupportedEvents, EventsRequested: req, EventsDelivered: delivered(r.EventsRequested),
		Delivery:                deliveryWire{Method: r.Method, EndpointURL: r.EndpointURL},
		MinVerificationInterval: int64((t.cfg.MinVerificationInterval + time.Second - 1) / time.Second),
		Description:             r.Description,
	}
}

// Stream is a stream as operators see it. It never holds the push
// authorization header, only whether one is set.
type Stream struct {
	ID                     string    `json:"stream_id"`
	Receiver               string    `json:"receiver"`
	Audience               string    `json:"aud"`
	Status                 string    `json:"status"`
	Reason                 string    `json:"reason,omitempty"`
	DeliveryMethod         string    `json:"delivery_method"`
	EndpointURL            string    `json:"endpoint_url,omitempty"`
	HasAuthorizationHeader bool      `json:"has_authorization_header"`
	EventsRequested        []string  `json:"events_requested"`
	EventsDelivered        []string  `json:"events_delivered"`
	Description            string    `json:"description,omitempty"`
	DefaultSubjects        string    `json:"default_subjects"`
	Created                time.Time `json:"created"`
	Updated                time.Time `json:"updated"`
}

func (r StreamRecord) view() Stream {
	req := r.EventsRequested
	if req == nil {
		req = []string{}
	}
	return Stream{
		ID: r.ID, Receiver: r.Receiver, Audience: r.Audience, Status: r.Status, Reason: r.Reason,
		DeliveryMethod: r.Method, EndpointURL: r.EndpointURL, HasAuthorizationHeader: r.AuthorizationHeader != "",
		EventsRequested: req, EventsDelivered: delivered(r.EventsRequested), Description: r.Description,
		DefaultSubjects: r.DefaultSubjects, Created: r.Created, Updated: r.Updated,
	}
}

// streamRequest is a decoded create / update / replace body.
type streamRequest struct {
	raw             map[string]json.RawMessage
	StreamID        string
	EventsRequested []string
	HasEvents       bool
	Delivery        *deliveryRequest
	Description     *string
}

type deliveryRequest struct {
	Method              string
	EndpointURL         string
	AuthorizationHeader *string
}

// transmitterFields are the stream members the transmitter supplies: a
// request may carry them only with their current values.
var transmitterFields = []string{"iss", "aud", "events_supported", "events_delivered", "min_verification_interval", "inactivity_timeout"}

// decodeStreamRequest parses a stream management body, naming the member
// and the reason on error.
func decodeStreamRequest(body []byte) (streamRequest, error) {
	var req streamRequest
	if err := json.Unmarshal(body, &req.raw); err != nil || req.raw == nil {
		return req, errors.New("body must be a JSON object")
	}
	if v, ok := req.raw["stream_id"]; ok {
		if err := json.Unmarshal(v, &req.StreamID); err != nil {
			return req, errors.New("stream_id must be a string")
		}
	}
	if v, ok := req.raw["events_requested"]; ok {
		if err := json.Unmarshal(v, &req.EventsRequested); err != nil {
			return req, errors.New("events_requested must be an array of strings")
		}
		if req.EventsRequested == nil {
			req.EventsRequested = []string{}
		}
		req.HasEvents = true
	}
	if v, ok := req.raw["description"]; ok && string(v) != "null" {
		var d string
		if err := json.Unmarshal(v, &d); err != nil {
			return req, errors.New("description must be a string")
		}
		req.Description = &d
	}
	if v, ok := req.raw["delivery"]; ok && string(v) != "null" {
		var d map[string]json.RawMessage
		if err := json.Unmarshal(v, &d); err != nil || d == nil {
			return req, errors.New("delivery must be an object")
		}
		req.Delivery = &deliveryRequest{}
		// The pre-SSF RISC shape named these delivery_method and url.
		if _, ok := d["method"]; !ok {
			d["method"] = d["delivery_method"]
		}
		if _, ok := d["endpoint_url"]; !ok {
			if u, ok := d["url"]; ok {
				d["endpoint_url"] = u
			}
		}
		if err := json.Unmarshal(d["method"], &req.Delivery.Method); err != nil || req.Delivery.Method == "" {
			return req, errors.New("delivery.method must be a non-empty string")
		}
		if u, ok := d["endpoint_url"]; ok && string(u) != "null" {
			if err := json.Unmarshal(u, &req.Delivery.EndpointURL); err != nil {
				return req, errors.New("delivery.endpoint_url must be a string")
			}
		}
		if a, ok := d["authorization_header"]; ok && string(a) != "null" {
			var h string
			if err := json.Unmarshal(a, &h); err != nil {
				return req, errors.New("delivery.authorization_header must be a string")
			}
			req.Delivery.AuthorizationHeader = &h
		}
	}
	return req, nil
}

// checkTransmitterFields returns an error naming the first transmitter
// supplied member whose value differs from the current one.
func checkTransmitterFields(req streamRequest, current streamWire) error {
	b, _ := json.Marshal(current)
	var cur map[string]json.RawMessage
	_ = json.Unmarshal(b, &cur)
	for _, f := range transmitterFields {
		v, ok := req.raw[f]
		if !ok {
			continue
		}
		if !sameJSON(v, cur[f]) {
			return fmt.Errorf("%s is supplied by the transmitter and may only be sent with its current value", f)
		}
	}
	return nil
}

// sameJSON compares two JSON values, treating string arrays as sets and a
// string as equal to an array holding only it.
func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil {
		return false
	}
	if len(b) == 0 {
		return x == nil
	}
	if json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(normalize(x), normalize(y))
}

func normalize(v any) any {
	switch t := v.(type) {
	case string:
		return []string{t}
	case []any:
		var ss []string
		for _, e := range t {
			s, ok := e.(string)
			if !ok {
				return t
			}
			ss = append(ss, s)
		}
		sort.Strings(ss)
		ss = slices.Compact(ss)
		if ss == nil {
			ss = []string{}
		}
		return ss
	}
	return v
}

// truncate shortens s to at most n runes.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n])
}

// MethodName is a delivery method's short name for people: push or poll
// (the URN itself when it is neither).
func MethodName(m string) string {
	switch m {
	case MethodPushURN, MethodRISCPush, "push":
		return "push"
	case MethodPollURN, legacyPollMethod, "poll":
		return "poll"
	}
	return m
}
