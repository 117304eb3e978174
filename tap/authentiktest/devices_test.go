package authentiktest

import (
	"net/http"
	"testing"
)

func TestDevicesPerTypeShapesAndOwnerFiltering(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw"})
	bob := mustUser(t, s, UserSpec{Username: "bob", Password: "pw"})
	tok, err := s.MintToken(alice.PK)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range DeviceTypes {
		t.Run(string(typ), func(t *testing.T) {
			mine, err := s.AddDevice(DeviceSpec{Type: typ, UserPK: alice.PK, Name: "mine"})
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := s.AddDevice(DeviceSpec{Type: typ, UserPK: bob.PK, Name: "theirs"})
			if err != nil {
				t.Fatal(err)
			}
			userBase := s.URL() + "/api/v3/authenticators/" + string(typ) + "/"
			adminBase := s.URL() + "/api/v3/authenticators/admin/" + string(typ) + "/"

			var p schemaPage[schemaTypedDevice]
			r := do(t, nil, "GET", userBase, tok, nil)
			wantStatus(t, r, http.StatusOK)
			r.decode(t, &p)
			p.check(t)
			if len(p.Results) != 1 || *p.Results[0].PK != mine.PK {
				t.Fatalf("user list = %+v", p.Results)
			}
			p.Results[0].check(t, typ)
			if *p.Results[0].User.PK != alice.PK || *p.Results[0].User.UID != alice.UID {
				t.Fatalf("device user = %+v", p.Results[0].User)
			}
			var one schemaTypedDevice
			r = do(t, nil, "GET", userBase+itoa(mine.PK)+"/", tok, nil)
			wantStatus(t, r, http.StatusOK)
			r.decode(t, &one)
			one.check(t, typ)

			wantStatus(t, do(t, nil, "GET", userBase+itoa(theirs.PK)+"/", tok, nil), http.StatusNotFound)
			wantStatus(t, do(t, nil, "DELETE", userBase+itoa(theirs.PK)+"/", tok, nil), http.StatusNotFound)
			wantStatus(t, do(t, nil, "GET", adminBase, tok, nil), http.StatusForbidden)
			wantStatus(t, do(t, nil, "POST", adminBase, tok, map[string]any{"name": "x"}), http.StatusForbidden)
			wantStatus(t, do(t, nil, "DELETE", adminBase+itoa(theirs.PK)+"/", tok, nil), http.StatusForbidden)
			wantStatus(t, do(t, nil, "PATCH", userBase+itoa(mine.PK)+"/", tok, map[string]any{"name": ""}), http.StatusBadRequest)
			wantStatus(t, do(t, nil, "PATCH", userBase+itoa(mine.PK)+"/", tok, map[string]any{"name": "renamed"}), http.StatusOK)

			p = schemaPage[schemaTypedDevice]{}
			do(t, nil, "GET", adminBase, s.AdminToken(), nil).decode(t, &p)
			if len(p.Results) != 2 {
				t.Fatalf("admin list has %d devices", len(p.Results))
			}
		})
	}
	var all []schemaDevice
	r := do(t, nil, "GET", s.URL()+"/api/v3/authenticators/all/", tok, nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &all)
	if len(all) != len(DeviceTypes) {
		t.Fatalf("all/ lists %d devices, want %d", len(all), len(DeviceTypes))
	}
	for _, d := range all {
		if d.PK == nil || d.Type == nil || d.Confirmed == nil || d.MetaModelName == nil || d.VerboseName == nil || d.Created == nil {
			t.Fatalf("Device misses required fields: %+v", d)
		}
	}
	all = nil
	do(t, nil, "GET", s.URL()+"/api/v3/authenticators/admin/all/?user="+itoa(bob.PK), s.AdminToken(), nil).decode(t, &all)
	if len(all) != len(DeviceTypes) {
		t.Fatalf("admin all/?user= lists %d", len(all))
	}
}

func TestDeviceEventsNameTheActor(t *testing.T) {
	tests := []struct {
		name    string
		version Version
		mfa     bool
	}{
		{"2026.2", Version2026_2, false},
		{"2026.8", Version2026_8, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestServer(t, func(c *Config) { c.Version = tc.version })
			alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw"})
			// `user` is read-only on every device serializer: the admin
			// create saves a device without an owner and fails
			r := do(t, nil, "POST", s.URL()+"/api/v3/authenticators/admin/totp/", s.AdminToken(), map[string]any{"name": "phone", "user": alice.PK})
			wantStatus(t, r, http.StatusInternalServerError)
			if n := len(s.Events()) + len(s.Devices(alice.PK)); n != 0 {
				t.Fatalf("a failed admin create left %d events or devices", n)
			}
			d, err := s.AddDevice(DeviceSpec{Type: DeviceTOTP, UserPK: alice.PK, Name: "phone"})
			if err != nil {
				t.Fatal(err)
			}
			created := struct{ PK *int }{PK: &d.PK}
			// the owner deletes it through the user endpoint
			c, err := s.Login("alice", "pw")
			if err != nil {
				t.Fatal(err)
			}
			wantStatus(t, do(t, c, "DELETE", s.URL()+"/api/v3/authenticators/totp/"+itoa(*created.PK)+"/", "", nil), http.StatusNoContent)

			cr := s.EventsByAction("model_created")
			del := s.EventsByAction("model_deleted")
			if len(cr) != 0 || len(del) != 1 {
				t.Fatalf("model events created %d deleted %d", len(cr), len(del))
			}
			if del[0].User["username"] != "alice" {
				t.Fatalf("actor: deleted by %v", del[0].User)
			}
			m := del[0].Context["model"].(map[string]any)
			if m["app"] != "authentik_stages_authenticator_totp" || m["model_name"] != "totpdevice" || m["pk"] != *created.PK || m["name"] != "phone" {
				t.Fatalf("model = %v", m)
			}
			added, removed := s.EventsByAction("mfa_device_added"), s.EventsByAction("mfa_device_removed")
			if (len(added) == 0 && len(removed) == 1) != tc.mfa || (!tc.mfa && len(added)+len(removed) != 0) {
				t.Fatalf("mfa events added %d removed %d under %s", len(added), len(removed), tc.version)
			}
			if tc.mfa {
				subj := removed[0].Context["subject"].(map[string]any)
				if subj["pk"] != alice.PK {
					t.Fatalf("mfa subject = %v", subj)
				}
			}
		})
	}
}
