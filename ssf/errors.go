package ssf

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
)

// ErrNotFound is returned for a stream that does not exist (or, on the
// receiver side, belongs to another receiver).
var ErrNotFound = errors.New("stream not found")

// ErrOperatorManaged is returned by Keys.Rotate when the signing keys come
// from files the operator manages.
var ErrOperatorManaged = errors.New("signing keys are operator-managed (--signing-key): rotate by changing the files")

// apiError is an error answered with SSF error JSON {"err","description"}.
type apiError struct {
	Status     int
	Code       string
	Desc       string
	Challenge  string // RFC 6750 error code for WWW-Authenticate (401/403)
	RetryAfter int    // seconds, for 429
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Desc) }

func badRequest(format string, a ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: "invalid_request", Desc: fmt.Sprintf(format, a...)}
}

func notFound() *apiError {
	return &apiError{Status: http.StatusNotFound, Code: "not_found", Desc: "no stream with this stream_id"}
}

func unauthorized(desc string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Code: "invalid_token", Desc: desc, Challenge: "invalid_token"}
}

func forbidden(scope string) *apiError {
	desc := "the token lacks the scope " + scope
	if scope == scopePoll {
		desc = "the token lacks the scope ssf.read (or ssf.manage.poll)"
	}
	return &apiError{Status: http.StatusForbidden, Code: "insufficient_scope", Desc: desc, Challenge: "insufficient_scope"}
}

func tooLarge(limit int64) *apiError {
	return &apiError{Status: http.StatusRequestEntityTooLarge, Code: "payload_too_large",
		Desc: fmt.Sprintf("request body is larger than %d bytes", limit)}
}

// errorHandler writes every handler error as SSF error JSON.
func (t *Transmitter) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var ae *apiError
	var he *echo.HTTPError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &mbe):
		ae = tooLarge(mbe.Limit)
	case errors.Is(err, ErrNotFound):
		ae = notFound()
	case errors.As(err, &he):
		ae = &apiError{Status: he.Code, Code: codeFor(he.Code), Desc: http.StatusText(he.Code)}
		if m, ok := he.Message.(string); ok {
			ae.Desc = m
		}
	default:
		t.log.ErrorContext(c.Request().Context(), "ssf request failed",
			slog.String("path", c.Path()), slog.String("request_id", requestID(c)), slog.Any("error", err))
		ae = &apiError{Status: http.StatusInternalServerError, Code: "internal_error", Desc: "internal error"}
	}
	h := c.Response().Header()
	h.Set("Cache-Control", "no-store")
	if ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden {
		ch := `Bearer realm="ssf"`
		if ae.Challenge != "" {
			ch += `, error="` + ae.Challenge + `"`
		}
		h.Set("WWW-Authenticate", ch)
	}
	if ae.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(ae.RetryAfter))
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(ae.Status)
		return
	}
	_ = c.JSON(ae.Status, map[string]string{"err": ae.Code, "description": ae.Desc})
}

func codeFor(status int) string {
	switch status {
	case http.StatusNotFound:
		return "not_found"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusRequestEntityTooLarge:
		return "payload_too_large"
	case http.StatusUnsupportedMediaType:
		return "unsupported_media_type"
	case http.StatusBadRequest:
		return "invalid_request"
	}
	return "error"
}

func requestID(c echo.Context) string {
	if id := c.Request().Header.Get(echo.HeaderXRequestID); id != "" {
		return id
	}
	return c.Response().Header().Get(echo.HeaderXRequestID)
}
