package authentiktest

import (
	"encoding/hex"
	"fmt"
	"sort"
	"time"
)

// DeviceType names an authenticator device type as authentik's URL paths do.
type DeviceType string

// The device types the simulator serves.
const (
	DeviceTOTP     DeviceType = "totp"
	DeviceWebAuthn DeviceType = "webauthn"
	DeviceStatic   DeviceType = "static"
	DeviceDuo      DeviceType = "duo"
	DeviceSMS      DeviceType = "sms"
	DeviceEmail    DeviceType = "email"
)

// DeviceTypes lists every DeviceType.
var DeviceTypes = []DeviceType{DeviceDuo, DeviceEmail, DeviceSMS, DeviceStatic, DeviceTOTP, DeviceWebAuthn}

// deviceMeta holds how authentik names a device type's model.
type deviceMeta struct{ app, model, class, verbose string }

var deviceMetas = map[DeviceType]deviceMeta{
	DeviceTOTP:     {"authentik_stages_authenticator_totp", "totpdevice", "TOTPDevice", "TOTP Device"},
	DeviceWebAuthn: {"authentik_stages_authenticator_webauthn", "webauthndevice", "WebAuthnDevice", "WebAuthn Device"},
	DeviceStatic:   {"authentik_stages_authenticator_static", "staticdevice", "StaticDevice", "Static Device"},
	DeviceDuo:      {"authentik_stages_authenticator_duo", "duodevice", "DuoDevice", "Duo Device"},
	DeviceSMS:      {"authentik_stages_authenticator_sms", "smsdevice", "SMSDevice", "SMS Device"},
	DeviceEmail:    {"authentik_stages_authenticator_email", "emaildevice", "EmailDevice", "Email Device"},
}

// ModelApp and ModelName return the context.model app and model_name that
// authentik's event records use for devices of type t.
func (t DeviceType) ModelApp() string  { return deviceMetas[t].app }
func (t DeviceType) ModelName() string { return deviceMetas[t].model }

// Device is a snapshot of a simulated authenticator device.
type Device struct {
	Type      DeviceType
	PK        int
	UserPK    int
	Name      string
	Confirmed bool
	Created   time.Time
}

// DeviceSpec describes a device for AddDevice.
type DeviceSpec struct {
	Type        DeviceType
	UserPK      int
	Name        string // default "<type> device"
	Unconfirmed bool
}

func deviceView(d *device) Device {
	return Device{Type: d.typ, PK: d.pk, UserPK: d.userPK, Name: d.name, Confirmed: d.confirmed, Created: d.created}
}

// AddDevice creates a device directly (a fixture: no event is recorded).
func (s *Server) AddDevice(spec DeviceSpec) (Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := deviceMetas[spec.Type]; !ok {
		return Device{}, fmt.Errorf("authentiktest: add device: unknown type %q", spec.Type)
	}
	if _, ok := s.state.users[spec.UserPK]; !ok {
		return Device{}, fmt.Errorf("authentiktest: add device: no user %d", spec.UserPK)
	}
	d := s.newDevice(spec.Type, spec.UserPK, spec.Name)
	d.confirmed = !spec.Unconfirmed
	return deviceView(d), nil
}

func (s *Server) newDevice(t DeviceType, userPK int, name string) *device {
	if name == "" {
		name = string(t) + " device"
	}
	now := s.now()
	d := &device{typ: t, pk: s.state.nextDevicePK[t], userPK: userPK, name: name, confirmed: true, created: now, lastUpdated: now}
	s.state.nextDevicePK[t]++
	switch t {
	case DeviceSMS:
		d.phone = "+15555550100"
	case DeviceEmail:
		if u := s.state.users[userPK]; u != nil {
			d.email = u.email
		}
	case DeviceWebAuthn:
		d.aaguid = "00000000-0000-0000-0000-000000000000"
	case DeviceStatic:
		d.tokens = []string{hex.EncodeToString(s.randBytes(4)), hex.EncodeToString(s.randBytes(4))}
	}
	s.state.devices[t][d.pk] = d
	return d
}

// Device returns the device of type t with pk.
func (s *Server) Device(t DeviceType, pk int) (Device, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.state.devices[t][pk]
	if !ok {
		return Device{}, false
	}
	return deviceView(d), true
}

// Devices lists the user's devices by type then pk.
func (s *Server) Devices(userPK int) []Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Device
	for _, d := range s.userDevices(userPK) {
		out = append(out, deviceView(d))
	}
	return out
}

func (s *Server) userDevices(userPK int) []*device {
	var out []*device
	for _, t := range DeviceTypes {
		for _, d := range s.state.devices[t] {
			if d.userPK == userPK {
				out = append(out, d)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].typ != out[j].typ {
			return out[i].typ < out[j].typ
		}
		return out[i].pk < out[j].pk
	})
	return out
}
