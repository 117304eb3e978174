package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sgnl-ai/caep.dev/secevent/pkg/parser"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
)

// The conformance suite's checks that the whole sidecar answers (the
// module-by-module replay of the SSF endpoints is in ssf/oidf_test.go).

// loopbackCert writes a throw-away certificate for 127.0.0.1.
func loopbackCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// discoveryURLs fetches the discovery document and returns every endpoint
// URL it names, with the issuer.
func discoveryURLs(t *testing.T, client *http.Client, url string, header http.Header) map[string]string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
		t.Fatalf("discovery %s: %d %v", url, resp.StatusCode, err)
	}
	out := map[string]string{}
	for _, k := range []string{"issuer", "jwks_uri", "configuration_endpoint", "status_endpoint", "add_subject_endpoint",
		"remove_subject_endpoint", "verification_endpoint"} {
		out[k], _ = m[k].(string)
	}
	return out
}

// TestOIDFTLSVersions is the suite's TLS sequence
// (OIDSSFValidateTlsConnectionConditionSequence) against a sidecar serving
// TLS itself: TLS 1.0 and 1.1 are refused, 1.2 works, a client offering
// 1.3 gets 1.3 (never 1.2 when 1.3 works), and with an https issuer every
// advertised endpoint is https.
func TestOIDFTLSVersions(t *testing.T) {
	certFile, keyFile, pool := loopbackCert(t)
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
		Mutate: func(c *sidecar.Config) {
			c.TLSCert, c.TLSKey = certFile, keyFile
			c.Issuer = "https://" + c.Listen + "/ssf"
			c.AuthentikToken = "" // no event-API poller: nothing here needs it
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	base := strings.Replace(w.Front, "http://", "https://", 1)
	for _, c := range []struct {
		name     string
		min, max uint16
		want     uint16 // 0: the handshake must fail
	}{
		{"TLS 1.0", tls.VersionTLS10, tls.VersionTLS10, 0},
		{"TLS 1.1", tls.VersionTLS11, tls.VersionTLS11, 0},
		{"TLS 1.2", tls.VersionTLS12, tls.VersionTLS12, tls.VersionTLS12},
		{"1.2 and 1.3 offered", tls.VersionTLS12, tls.VersionTLS13, tls.VersionTLS13},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", strings.TrimPrefix(base, "https://"), &tls.Config{RootCAs: pool, MinVersion: c.min, MaxVersion: c.max})
			if c.want == 0 {
				if err == nil {
					conn.Close()
					t.Fatalf("%s accepted", c.name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if v := conn.ConnectionState().Version; v != c.want {
				t.Errorf("negotiated %s, want %s", tls.VersionName(v), tls.VersionName(c.want))
			}
		})
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	urls := discoveryURLs(t, client, base+"/.well-known/ssf-configuration/ssf", nil)
	for k, u := range urls {
		if !strings.HasPrefix(u, "https://") {
			t.Errorf("%s %q is not https", k, u)
		}
	}
	resp, err := client.Get(urls["jwks_uri"])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"keys"`) {
		t.Errorf("jwks over TLS: %d %s", resp.StatusCode, b)
	}
	// poll-only over TLS: create, trigger, one poll holding the answer.
	call := func(method, url, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Authorization", "bearer "+pollReceiverToken)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	code, body := call("POST", urls["configuration_endpoint"], `{"description":"Stream for OIDF Conformance Test-Suite","delivery":{"method":"urn:ietf:rfc:8936"}}`)
	var s struct {
		StreamID string `json:"stream_id"`
		Delivery struct {
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	if err := json.Unmarshal(body, &s); err != nil || code != 201 || !strings.HasPrefix(s.Delivery.EndpointURL, "https://") {
		t.Fatalf("create over TLS: %d %s", code, body)
	}
	if code, body := call("POST", urls["verification_endpoint"], `{"stream_id":"`+s.StreamID+`","state":"tls-state"}`); code != 204 {
		t.Fatalf("verify over TLS: %d %s", code, body)
	}
	code, body = call("POST", s.Delivery.EndpointURL, `{"maxEvents":10,"returnImmediately":true}`)
	var pr struct {
		Sets map[string]string `json:"sets"`
	}
	if err := json.Unmarshal(body, &pr); err != nil || code != 200 || len(pr.Sets) != 1 {
		t.Fatalf("poll over TLS: %d %s", code, body)
	}
	verifier := parser.NewParser(parser.WithJWKSJSON(b), parser.WithExpectedIssuer(base+"/ssf"), parser.WithExpectedAudience("poll-rx"))
	for _, compact := range pr.Sets {
		if _, err := verifier.ParseSecEvent(compact); err != nil {
			t.Errorf("independent verifier refused the SET polled over TLS: %v", err)
		}
	}
}

// TestOIDFHTTPSBehindTerminator: behind a TLS terminator the sidecar
// listens on plain HTTP with an https issuer. X-Forwarded-Proto and
// X-Forwarded-Host, even from a trusted proxy, never change the URLs it
// advertises (discovery and a new stream's poll URL): the issuer alone
// decides them, so the suite's https checks pass.
func TestOIDFHTTPSBehindTerminator(t *testing.T) {
	const issuer = "https://sso.example.com/ssf"
	for _, trusted := range []bool{true, false} {
		t.Run(map[bool]string{true: "trusted proxy", false: "untrusted peer"}[trusted], func(t *testing.T) {
			w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
				Mutate: func(c *sidecar.Config) {
					c.Issuer = issuer
					c.AuthentikToken = ""
					if trusted {
						c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { w.Close() })
			forwarded := http.Header{"X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"attacker.example"}}
			for _, h := range []http.Header{nil, forwarded} {
				urls := discoveryURLs(t, http.DefaultClient, w.Front+"/.well-known/ssf-configuration/ssf", h)
				if urls["issuer"] != issuer {
					t.Errorf("issuer %q", urls["issuer"])
				}
				for k, u := range urls {
					if !strings.HasPrefix(u, "https://sso.example.com/ssf") {
						t.Errorf("with %v: %s %q does not follow the issuer", h, k, u)
					}
				}
			}
			req, _ := http.NewRequest("POST", w.Front+"/ssf/streams", strings.NewReader(`{"delivery":{"method":"urn:ietf:rfc:8936"}}`))
			req.Header.Set("Authorization", "bearer "+pollReceiverToken)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Forwarded-Proto", "http")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var s struct {
				Delivery struct {
					EndpointURL string `json:"endpoint_url"`
				} `json:"delivery"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != 201 {
				t.Fatalf("create: %d %v", resp.StatusCode, err)
			}
			if !strings.HasPrefix(s.Delivery.EndpointURL, "https://sso.example.com/ssf/poll/") {
				t.Errorf("poll URL %q does not follow the issuer", s.Delivery.EndpointURL)
			}
		})
	}
}
