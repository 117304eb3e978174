package authentiktest

import (
	"io"
	"net/http"
	"sort"
	"strconv"
)

// deviceJSON renders the per-type serializer (TOTPDevice, WebAuthnDevice, …).
func (s *Server) deviceJSON(d *device) map[string]any {
	out := map[string]any{"pk": d.pk, "name": d.name, "user": s.partialUserJSON(s.state.users[d.userPK])}
	switch d.typ {
	case DeviceWebAuthn:
		out["created_on"] = pyTime(d.created)
		out["device_type"] = nil
		out["aaguid"] = d.aaguid
	case DeviceStatic:
		toks := []any{}
		for _, t := range d.tokens {
			toks = append(toks, map[string]any{"token": t})
		}
		out["token_set"] = toks
	case DeviceSMS:
		out["phone_number"] = d.phone
	case DeviceEmail:
		out["email"] = d.email
	}
	return out
}

// genericDeviceJSON renders the Device schema of /authenticators/all/.
func genericDeviceJSON(d *device) map[string]any {
	m := deviceMetas[d.typ]
	return map[string]any{
		"verbose_name": m.verbose, "verbose_name_plural": m.verbose + "s",
		"meta_model_name": m.app + "." + m.model, "pk": strconv.Itoa(d.pk), "name": d.name,
		"type": m.app + "." + m.class, "confirmed": d.confirmed, "created": pyTime(d.created),
		"last_updated": pyTime(d.lastUpdated), "last_used": nil, "extra_description": nil, "external_id": nil,
	}
}

func (s *Server) deviceRoutes(mux *http.ServeMux, t DeviceType) {
	user := "/api/v3/authenticators/" + string(t) + "/"
	admin := "/api/v3/authenticators/admin/" + string(t) + "/"
	mux.HandleFunc("GET "+user+"{$}", func(w http.ResponseWriter, r *http.Request) { s.handleDeviceList(w, r, t, false) })
	mux.HandleFunc("GET "+admin+"{$}", func(w http.ResponseWriter, r *http.Request) { s.handleDeviceList(w, r, t, true) })
	mux.HandleFunc("POST "+admin+"{$}", func(w http.ResponseWriter, r *http.Request) { s.handleDeviceCreate(w, r, t) })
	for _, base := range []string{user, admin} {
		isAdmin := base == admin
		mux.HandleFunc("GET "+base+"{id}/{$}", func(w http.ResponseWriter, r *http.Request) { s.handleDeviceGet(w, r, t, isAdmin) })
		mux.HandleFunc("PUT "+base+"{id}/{$}", func(w http.ResponseWriter, r *http.Request) { s.handleDeviceUpdate(w, r, t, isAdmin) })
		mux.HandleFunc("PATCH "+base+"{id}/{$}", func(w http.ResponseWriter, r *http.Request) { s.handleDeviceUpdate(w, r, t, isAdmin) })
		mux.HandleFunc("DELETE "+base+"{id}/{$}", func(w http.ResponseWriter, r *http.Request) { s.handleDeviceDelete(w, r, t, isAdmin) })
	}
}

// deviceCaller authenticates; admin endpoints need a superuser (403).
func (s *Server) deviceCaller(w http.ResponseWriter, r *http.Request, admin bool) *caller {
	c := s.authAPI(w, r)
	if c == nil {
		return nil
	}
	if admin && !c.admin() {
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return nil
	}
	return c
}

func sortedDevices(m map[int]*device) []*device {
	out := make([]*device, 0, len(m))
	for _, d := range m {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pk < out[j].pk })
	return out
}

func (s *Server) handleDeviceList(w http.ResponseWriter, r *http.Request, t DeviceType, admin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.deviceCaller(w, r, admin)
	if c == nil {
		return
	}
	name := r.URL.Query().Get("name")
	var items []any
	for _, d := range sortedDevices(s.state.devices[t]) {
		if (!admin && d.userPK != c.user.pk) || (name != "" && d.name != name) {
			continue
		}
		items = append(items, s.deviceJSON(d))
	}
	s.writePage(w, r, items)
}

func (s *Server) handleDeviceAll(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	out := []any{}
	for _, d := range s.userDevices(c.user.pk) {
		out = append(out, genericDeviceJSON(d))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleAdminDeviceAll(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.deviceCaller(w, r, true)
	if c == nil {
		return
	}
	pk := c.user.pk
	if v := r.URL.Query().Get("user"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeValidation(w, map[string][]string{"user": {"A valid integer is required."}})
			return
		}
		pk = n
	}
	out := []any{}
	for _, d := range s.userDevices(pk) {
		out = append(out, genericDeviceJSON(d))
	}
	writeJSON(w, http.StatusOK, out)
}

// deviceFor finds the device; on the user endpoints only the caller's own.
func (s *Server) deviceFor(w http.ResponseWriter, r *http.Request, c *caller, t DeviceType, admin bool) *device {
	pk, ok := pathInt(r, "id")
	d := s.state.devices[t][pk]
	if !ok || d == nil || (!admin && d.userPK != c.user.pk) {
		writeDetail(w, http.StatusNotFound, msgNotFound)
		return nil
	}
	return d
}

func (s *Server) handleDeviceGet(w http.ResponseWriter, r *http.Request, t DeviceType, admin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.deviceCaller(w, r, admin)
	if c == nil {
		return
	}
	if d := s.deviceFor(w, r, c, t, admin); d != nil {
		writeJSON(w, http.StatusOK, s.deviceJSON(d))
	}
}

type deviceWrite struct {
	Name *string `json:"name"`
}

func validateDeviceName(in deviceWrite, full bool, t DeviceType) map[string][]string {
	max := 64
	if t == DeviceWebAuthn {
		max = 200
	}
	switch {
	case in.Name == nil && full:
		return map[string][]string{"name": {"This field is required."}}
	case in.Name != nil && *in.Name == "":
		return map[string][]string{"name": {"This field may not be blank."}}
	case in.Name != nil && len(*in.Name) > max:
		return map[string][]string{"name": {"Ensure this field has no more than " + strconv.Itoa(max) + " characters."}}
	}
	return nil
}

// handleDeviceCreate is the admin POST. Every device serializer declares
// `user` read-only and the request schema has only `name`, so the device
// is saved without an owner: Device.user is NOT NULL and the save fails
// (IntegrityError, a plain 500). Nothing is created or recorded; admins
// add devices through the Duo import actions or enrolment flows.
func (s *Server) handleDeviceCreate(w http.ResponseWriter, r *http.Request, t DeviceType) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.deviceCaller(w, r, true)
	if c == nil {
		return
	}
	var in deviceWrite
	if err := decodeBody(r, &in); err != nil {
		writeParseError(w, err)
		return
	}
	if errs := validateDeviceName(in, true, t); errs != nil {
		writeValidation(w, errs)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, "<h1>Server Error (500)</h1>")
}

func (s *Server) handleDeviceUpdate(w http.ResponseWriter, r *http.Request, t DeviceType, admin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.deviceCaller(w, r, admin)
	if c == nil {
		return
	}
	d := s.deviceFor(w, r, c, t, admin)
	if d == nil {
		return
	}
	var in deviceWrite
	if err := decodeBody(r, &in); err != nil {
		writeParseError(w, err)
		return
	}
	if errs := validateDeviceName(in, r.Method == http.MethodPut, t); errs != nil {
		writeValidation(w, errs)
		return
	}
	if in.Name != nil {
		d.name = *in.Name
	}
	d.lastUpdated = s.now()
	s.recordDeviceModel("model_updated", c.user, d, r)
	writeJSON(w, http.StatusOK, s.deviceJSON(d))
}

// handleDeviceDelete removes a device (204). The event names the acting
// user, not the owner.
func (s *Server) handleDeviceDelete(w http.ResponseWriter, r *http.Request, t DeviceType, admin bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.deviceCaller(w, r, admin)
	if c == nil {
		return
	}
	d := s.deviceFor(w, r, c, t, admin)
	if d == nil {
		return
	}
	delete(s.state.devices[t], d.pk)
	s.recordDeviceModel("model_deleted", c.user, d, r)
	s.recordMFA("mfa_device_removed", c.user, d, r)
	w.WriteHeader(http.StatusNoContent)
}
