package authentiktest

// Structs mirroring api-subset.yaml: required fields are non-pointer and
// checked present by decodeStrict (DisallowUnknownFields catches fields the
// schema does not have).

import (
	"encoding/json"
	"testing"
)

type schemaPagination struct {
	Next       *float64 `json:"next"`
	Previous   *float64 `json:"previous"`
	Count      *float64 `json:"count"`
	Current    *float64 `json:"current"`
	TotalPages *float64 `json:"total_pages"`
	StartIndex *float64 `json:"start_index"`
	EndIndex   *float64 `json:"end_index"`
}

func (p schemaPagination) check(t testing.TB) {
	t.Helper()
	if p.Next == nil || p.Previous == nil || p.Count == nil || p.Current == nil || p.TotalPages == nil ||
		p.StartIndex == nil || p.EndIndex == nil {
		t.Fatalf("pagination misses a required field: %+v", p)
	}
}

type schemaPage[T any] struct {
	Pagination   *schemaPagination `json:"pagination"`
	Results      []T               `json:"results"`
	Autocomplete map[string]any    `json:"autocomplete"`
}

func (p schemaPage[T]) check(t testing.TB) {
	t.Helper()
	if p.Pagination == nil || p.Results == nil || p.Autocomplete == nil {
		t.Fatalf("paginated list misses pagination, results or autocomplete")
	}
	p.Pagination.check(t)
}

type schemaUserSelf struct {
	PK                *int           `json:"pk"`
	Username          *string        `json:"username"`
	Name              *string        `json:"name"`
	IsActive          *bool          `json:"is_active"`
	IsSuperuser       *bool          `json:"is_superuser"`
	Groups            []any          `json:"groups"`
	Roles             []any          `json:"roles"`
	Email             string         `json:"email"`
	Avatar            *string        `json:"avatar"`
	UID               *string        `json:"uid"`
	Settings          map[string]any `json:"settings"`
	Type              string         `json:"type"`
	SystemPermissions []string       `json:"system_permissions"`
}

func (u schemaUserSelf) check(t testing.TB) {
	t.Helper()
	if u.PK == nil || u.Username == nil || u.Name == nil || u.IsActive == nil || u.IsSuperuser == nil ||
		u.Groups == nil || u.Roles == nil || u.Avatar == nil || u.UID == nil || u.Settings == nil || u.SystemPermissions == nil {
		t.Fatalf("UserSelf misses a required field: %+v", u)
	}
}

type schemaSessionUser struct {
	User     *schemaUserSelf `json:"user"`
	Original *schemaUserSelf `json:"original"`
}

type schemaUser struct {
	PK                 *int           `json:"pk"`
	Username           *string        `json:"username"`
	Name               *string        `json:"name"`
	IsActive           bool           `json:"is_active"`
	LastLogin          *string        `json:"last_login"`
	DateJoined         *string        `json:"date_joined"`
	IsSuperuser        *bool          `json:"is_superuser"`
	Groups             []string       `json:"groups"`
	GroupsObj          []any          `json:"groups_obj"`
	Roles              []string       `json:"roles"`
	RolesObj           []any          `json:"roles_obj"`
	Email              string         `json:"email"`
	Avatar             *string        `json:"avatar"`
	Attributes         map[string]any `json:"attributes"`
	UID                *string        `json:"uid"`
	Path               string         `json:"path"`
	Type               string         `json:"type"`
	UUID               *string        `json:"uuid"`
	PasswordChangeDate *string        `json:"password_change_date"`
	LastUpdated        *string        `json:"last_updated"`
}

func (u schemaUser) check(t testing.TB) {
	t.Helper()
	if u.PK == nil || u.Username == nil || u.Name == nil || u.DateJoined == nil || u.IsSuperuser == nil ||
		u.GroupsObj == nil || u.RolesObj == nil || u.Avatar == nil || u.UID == nil || u.UUID == nil ||
		u.PasswordChangeDate == nil || u.LastUpdated == nil {
		t.Fatalf("User misses a required field: %+v", u)
	}
}

type schemaPartialUser struct {
	PK         *int           `json:"pk"`
	Username   *string        `json:"username"`
	Name       *string        `json:"name"`
	IsActive   bool           `json:"is_active"`
	LastLogin  *string        `json:"last_login"`
	Email      string         `json:"email"`
	Attributes map[string]any `json:"attributes"`
	UID        *string        `json:"uid"`
}

type schemaSession struct {
	UUID          string          `json:"uuid"`
	Current       *bool           `json:"current"`
	UserAgent     json.RawMessage `json:"user_agent"`
	GeoIP         json.RawMessage `json:"geo_ip"`
	ASN           json.RawMessage `json:"asn"`
	User          *int            `json:"user"`
	LastIP        *string         `json:"last_ip"`
	LastUserAgent *string         `json:"last_user_agent"`
	LastUsed      *string         `json:"last_used"`
	Expires       *string         `json:"expires"`
}

func (s schemaSession) check(t testing.TB) {
	t.Helper()
	if s.Current == nil || s.UserAgent == nil || s.GeoIP == nil || s.ASN == nil || s.User == nil ||
		s.LastIP == nil || s.LastUserAgent == nil || s.LastUsed == nil || s.Expires == nil {
		t.Fatalf("AuthenticatedSession misses a required field: %+v", s)
	}
	var ua struct {
		Device    map[string]string `json:"device"`
		OS        map[string]string `json:"os"`
		UserAgent map[string]string `json:"user_agent"`
		String    *string           `json:"string"`
	}
	if err := json.Unmarshal(s.UserAgent, &ua); err != nil || ua.Device == nil || ua.OS == nil || ua.UserAgent == nil || ua.String == nil {
		t.Fatalf("user_agent %s: %v", s.UserAgent, err)
	}
}

type schemaEvent struct {
	PK       *string        `json:"pk"`
	User     map[string]any `json:"user"`
	Action   *string        `json:"action"`
	App      *string        `json:"app"`
	Context  map[string]any `json:"context"`
	ClientIP *string        `json:"client_ip"`
	Created  *string        `json:"created"`
	Expires  string         `json:"expires"`
	Brand    map[string]any `json:"brand"`
}

func (e schemaEvent) check(t testing.TB) {
	t.Helper()
	if e.PK == nil || e.Action == nil || e.App == nil || e.Created == nil {
		t.Fatalf("Event misses a required field: %+v", e)
	}
}

type schemaDevice struct {
	VerboseName       *string `json:"verbose_name"`
	VerboseNamePlural *string `json:"verbose_name_plural"`
	MetaModelName     *string `json:"meta_model_name"`
	PK                *string `json:"pk"`
	Name              *string `json:"name"`
	Type              *string `json:"type"`
	Confirmed         *bool   `json:"confirmed"`
	Created           *string `json:"created"`
	LastUpdated       *string `json:"last_updated"`
	LastUsed          *string `json:"last_used"`
	ExtraDescription  *string `json:"extra_description"`
	ExternalID        *string `json:"external_id"`
}

// schemaTypedDevice covers TOTPDevice, WebAuthnDevice, StaticDevice,
// DuoDevice, SMSDevice and EmailDevice.
type schemaTypedDevice struct {
	PK          *int               `json:"pk"`
	Name        *string            `json:"name"`
	User        *schemaPartialUser `json:"user"`
	CreatedOn   *string            `json:"created_on"`
	DeviceType  json.RawMessage    `json:"device_type"`
	AAGUID      *string            `json:"aaguid"`
	TokenSet    []map[string]any   `json:"token_set"`
	PhoneNumber *string            `json:"phone_number"`
	Email       *string            `json:"email"`
}

func (d schemaTypedDevice) check(t testing.TB, typ DeviceType) {
	t.Helper()
	if d.PK == nil || d.Name == nil || d.User == nil || d.User.PK == nil || d.User.UID == nil {
		t.Fatalf("%s device misses pk, name or user: %+v", typ, d)
	}
	switch typ {
	case DeviceWebAuthn:
		if d.CreatedOn == nil || d.DeviceType == nil || d.AAGUID == nil {
			t.Fatalf("WebAuthnDevice misses created_on, device_type or aaguid")
		}
	case DeviceStatic:
		if d.TokenSet == nil {
			t.Fatalf("StaticDevice misses token_set")
		}
	case DeviceSMS:
		if d.PhoneNumber == nil {
			t.Fatalf("SMSDevice misses phone_number")
		}
	case DeviceEmail:
		if d.Email == nil {
			t.Fatalf("EmailDevice misses email")
		}
	}
}

type schemaFlow struct {
	PK                    *string         `json:"pk"`
	PolicyBindingModelPtr *string         `json:"policybindingmodel_ptr_id"`
	Name                  *string         `json:"name"`
	Slug                  *string         `json:"slug"`
	Title                 *string         `json:"title"`
	Designation           *string         `json:"designation"`
	Background            string          `json:"background"`
	BackgroundURL         *string         `json:"background_url"`
	BackgroundThemedURLs  json.RawMessage `json:"background_themed_urls"`
	Stages                []string        `json:"stages"`
	Policies              []string        `json:"policies"`
	CacheCount            *int            `json:"cache_count"`
	PolicyEngineMode      string          `json:"policy_engine_mode"`
	CompatibilityMode     bool            `json:"compatibility_mode"`
	ExportURL             *string         `json:"export_url"`
	Layout                string          `json:"layout"`
	DeniedAction          string          `json:"denied_action"`
	Authentication        string          `json:"authentication"`
}

func (f schemaFlow) check(t testing.TB) {
	t.Helper()
	if f.PK == nil || f.PolicyBindingModelPtr == nil || f.Name == nil || f.Slug == nil || f.Title == nil ||
		f.Designation == nil || f.BackgroundURL == nil || f.BackgroundThemedURLs == nil || f.Stages == nil ||
		f.Policies == nil || f.CacheCount == nil || f.ExportURL == nil {
		t.Fatalf("Flow misses a required field: %+v", f)
	}
}

type schemaBrand struct {
	BrandUUID                     *string        `json:"brand_uuid"`
	Domain                        *string        `json:"domain"`
	Default                       bool           `json:"default"`
	BrandingTitle                 string         `json:"branding_title"`
	BrandingLogo                  string         `json:"branding_logo"`
	BrandingFavicon               string         `json:"branding_favicon"`
	BrandingCustomCSS             string         `json:"branding_custom_css"`
	BrandingDefaultFlowBackground string         `json:"branding_default_flow_background"`
	FlowAuthentication            *string        `json:"flow_authentication"`
	FlowInvalidation              *string        `json:"flow_invalidation"`
	FlowRecovery                  *string        `json:"flow_recovery"`
	FlowUnenrollment              *string        `json:"flow_unenrollment"`
	FlowUserSettings              *string        `json:"flow_user_settings"`
	FlowDeviceCode                *string        `json:"flow_device_code"`
	DefaultApplication            *string        `json:"default_application"`
	WebCertificate                *string        `json:"web_certificate"`
	ClientCertificates            []string       `json:"client_certificates"`
	Attributes                    map[string]any `json:"attributes"`
}
