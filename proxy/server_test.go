package proxy

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
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigValidateReportsEverything(t *testing.T) {
	err := Config{
		Upstream:       mustURL(t, "ftp://x/?q=1"),
		TrustedProxies: []netip.Prefix{{}},
		SSFPrefixes:    []string{"ssf", "/"},
		TLSCertFile:    "cert.pem",
		BeforeTimeout:  -1,
		CaptureLimit:   -5,
	}.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"Listen is empty", "scheme \"ftp\"", "query or fragment", "TrustedProxies[0]",
		"without an SSF handler", "SSFPrefixes[0]", "SSFPrefixes[1]", "TLSCertFile and TLSKeyFile", "BeforeTimeout is negative",
		"CaptureLimit is negative"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if err := (Config{Listen: ":0", Upstream: mustURL(t, "http://authentik:9000")}).Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New accepted an empty config")
	}
}

func TestUpstreamBasePath(t *testing.T) {
	up := reflectUpstream(t)
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL+"/authentik/")})
	resp, err := http.Get(base + "/api/v3/a%2Fb?x=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s seen
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.RequestURI != "/authentik/api/v3/a%2Fb?x=1" {
		t.Errorf("upstream got %q", s.RequestURI)
	}
}

// TestTLSAndHTTP2 serves TLS with a throw-away certificate: clients get
// HTTP/2 and the upstream is told the original scheme was https.
func TestTLSAndHTTP2(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	up := reflectUpstream(t)
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), TLSCertFile: certFile, TLSKeyFile: keyFile})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := client.Get(strings.Replace(base, "http://", "https://", 1) + "/if/admin/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s seen
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("client spoke %s", resp.Proto)
	}
	if s.Header.Get("X-Forwarded-Proto") != "https" || s.Proto != "HTTP/1.1" {
		t.Errorf("upstream saw proto %s, X-Forwarded-Proto %q", s.Proto, s.Header.Get("X-Forwarded-Proto"))
	}
}

func selfSigned(t testing.TB) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestGracefulShutdown: a request in flight when Run's context ends is
// completed; one that outlives ShutdownTimeout makes Run report it.
func TestGracefulShutdown(t *testing.T) {
	cases := []struct {
		name    string
		finish  bool // the upstream answers within the drain deadline
		wantErr bool
	}{
		{"drains", true, false},
		{"deadline", false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			entered := make(chan struct{})
			release := make(chan struct{})
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(entered)
				select {
				case <-release:
					io.WriteString(w, "finished")
				case <-r.Context().Done():
				}
			}))
			defer up.Close()
			s, err := New(Config{Listen: "127.0.0.1:0", Upstream: mustURL(t, up.URL), ShutdownTimeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			runErr := make(chan error, 1)
			go func() { runErr <- s.Run(ctx) }()
			<-s.Ready()
			type result struct {
				body string
				err  error
			}
			res := make(chan result, 1)
			go func() {
				resp, err := http.Get("http://" + s.Addr().String() + "/long")
				if err != nil {
					res <- result{err: err}
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				res <- result{string(b), err}
			}()
			<-entered
			cancel()
			// New connections are refused once draining has begun.
			waitFor(t, "listener closed", func() bool {
				c, err := net.Dial("tcp", s.Addr().String())
				if err == nil {
					c.Close()
				}
				return err != nil
			})
			if c.finish {
				close(release)
			}
			err = <-runErr
			if (err != nil) != c.wantErr {
				t.Errorf("Run returned %v", err)
			}
			r := <-res
			if c.finish && (r.err != nil || r.body != "finished") {
				t.Errorf("in-flight request: %q %v", r.body, r.err)
			}
			if !c.finish {
				close(release)
				if r.err == nil && r.body == "finished" {
					t.Error("request outliving the deadline completed")
				}
			}
			if err := s.Run(context.Background()); err == nil || errors.Is(err, context.Canceled) {
				t.Errorf("second Run: %v", err)
			}
		})
	}
}
