package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Tracing is the process's trace pipeline. With no OTLP endpoint configured
// (or OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none) it is off:
// Provider is nil, nothing is installed globally, and the proxy starts no
// spans at all.
type Tracing struct {
	// Provider is the installed tracer provider, nil when tracing is off.
	Provider trace.TracerProvider
	// Endpoint and Protocol say where spans go (for the start-up log).
	Endpoint, Protocol string
	shutdown           func(context.Context) error
}

// Shutdown flushes spans still buffered and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// SetupTracing builds the SDK from the standard OTEL_* variables only:
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT turns it
// on; OTEL_EXPORTER_OTLP(_TRACES)_PROTOCOL picks http/protobuf (default) or
// grpc; headers, timeout, compression and TLS are read by the exporter
// itself, OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_* by the SDK, and
// OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES by the resource. It installs
// the provider and the W3C trace-context propagator globally (package ssf
// and tap use the global tracer).
func SetupTracing(ctx context.Context, version string) (*Tracing, error) {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return &Tracing{}, nil
	}
	if exp := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); exp != "" && exp != "otlp" {
		if exp == "none" {
			return &Tracing{}, nil
		}
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: only otlp and none are supported", exp)
	}
	endpoint := firstEnv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
	if endpoint == "" {
		return &Tracing{}, nil
	}
	protocol := firstEnv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
	if protocol == "" {
		protocol = "http/protobuf"
	}
	var exporter sdktrace.SpanExporter
	var err error
	switch protocol {
	case "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: use http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	// service.instance.id tells replicas apart (OTEL_RESOURCE_ATTRIBUTES
	// may set its own); host.name says where each runs.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "ssf-sidecar"), attribute.String("service.version", version),
			attribute.String("service.instance.id", newInstanceID())),
		resource.WithHost(), resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && res == nil {
		// A partial resource (e.g. a malformed OTEL_RESOURCE_ATTRIBUTES
		// entry) is still used; only a missing one is fatal.
		_ = exporter.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	// The sampler is read from OTEL_TRACES_SAMPLER(_ARG) by the SDK
	// (default: parent-based, always on).
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	return &Tracing{Provider: tp, Endpoint: endpoint, Protocol: protocol, shutdown: func(ctx context.Context) error {
		return errors.Join(tp.ForceFlush(ctx), tp.Shutdown(ctx))
	}}, nil
}

// otelErrorLog sends the SDK's own errors (an unreachable collector, a
// full export queue) to the structured log instead of the plain log
// package, at most one record per interval; the rest are counted in the
// next record's "suppressed".
type otelErrorLog struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newOTelErrorLog(log *slog.Logger, interval time.Duration) *otelErrorLog {
	return &otelErrorLog{log: log, interval: interval, now: time.Now}
}

// userInfo matches the user information of a URL in an error text.
var userInfo = regexp.MustCompile(`//[^/@\s"]+@`)

func (h *otelErrorLog) Handle(err error) {
	if err == nil {
		return
	}
	h.mu.Lock()
	now := h.now()
	if !h.last.IsZero() && now.Sub(h.last) < h.interval {
		h.suppressed++
		h.mu.Unlock()
		return
	}
	n := h.suppressed
	h.last, h.suppressed = now, 0
	h.mu.Unlock()
	h.log.Warn("tracing: export failed", slog.String("error", userInfo.ReplaceAllString(err.Error(), "//***@")),
		slog.Int("suppressed", n))
}

// newInstanceID is a random id for this process's service.instance.id.
func newInstanceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := strings.TrimSpace(os.Getenv(n)); v != "" {
			return v
		}
	}
	return ""
}

// redactEndpoint drops any user information from an endpoint URL before
// it is logged.
func redactEndpoint(e string) string {
	u, err := url.Parse(e)
	if err != nil || u.Host == "" {
		return "(unparsed endpoint)"
	}
	return u.Redacted()
}
