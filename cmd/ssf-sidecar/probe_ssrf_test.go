//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// The SSRF system test runs `serve` in a child process (this test binary,
// re-executed with probeChildEnv set) so that what the sidecar reads from
// its environment at start is real: HTTPS_PROXY and HTTP_PROXY point at a
// listener that must see nothing, SSL_CERT_FILE makes the test CA trusted
// (so a refusal is never a certificate failure in disguise), and the
// process's resolver answers test names with private addresses (the child
// installs it before the sidecar starts; nothing else runs in that
// process). The parent holds every listener and counts the connections
// they accept, and drives `receivers check --probe` against the child's
// admin API.

const (
	probeChildEnv   = "SSF_PROBE_SSRF_TEST_CHILD"
	probeHostsEnv   = "SSF_PROBE_SSRF_TEST_HOSTS" // name=addr[,addr];name=...
	probeRxToken    = "probe-receiver-token-0123456789abcdef"
	redirectRxToken = "redirect-receiver-token-0123456789ab"
	storedRxToken   = "stored-receiver-token-0123456789abcd"
)

// TestProbeSSRFChild is the child side of TestProbeRefusesPrivateDestinations.
// Outside a child it returns at once.
func TestProbeSSRFChild(t *testing.T) {
	if os.Getenv(probeChildEnv) != "1" {
		return
	}
	hosts, err := parseTestHosts(os.Getenv(probeHostsEnv))
	if err != nil {
		t.Fatal(err)
	}
	installTestResolver(hosts)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, []string{"serve"}, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func parseTestHosts(s string) (map[string][]netip.Addr, error) {
	hosts := map[string][]netip.Addr{}
	for _, entry := range strings.Split(s, ";") {
		if entry == "" {
			continue
		}
		name, list, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("test hosts entry %q has no =", entry)
		}
		for _, a := range strings.Split(list, ",") {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return nil, fmt.Errorf("test hosts entry %q: %w", entry, err)
			}
			hosts[name] = append(hosts[name], ip)
		}
	}
	return hosts, nil
}

// installTestResolver makes the process's default resolver answer from
// hosts (A and AAAA records; NXDOMAIN for other names) through an
// in-memory DNS server. Only for a child process: it changes a global.
func installTestResolver(hosts map[string][]netip.Addr) {
	net.DefaultResolver.PreferGo = true
	net.DefaultResolver.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		client, server := net.Pipe() // not a PacketConn: the resolver frames messages as over TCP
		go serveTestDNS(server, hosts)
		return client, nil
	}
}

func serveTestDNS(c net.Conn, hosts map[string][]netip.Addr) {
	defer c.Close()
	for {
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		resp, err := answerTestDNS(q, hosts)
		if err != nil {
			return
		}
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
			return
		}
	}
}

func answerTestDNS(query []byte, hosts map[string][]netip.Addr) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	addrs, known := hosts[strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))]
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, a := range addrs {
		hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			err = b.AResource(hdr, dnsmessage.AResource{A: a.As4()})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			err = b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// TestTestResolver: the child's resolver answers what it is told, so a
// refusal in the system test is about the address, not a failed look-up.
func TestTestResolver(t *testing.T) {
	hosts, err := parseTestHosts("a.ssrf.test=127.0.0.1,::1;m.ssrf.test=::ffff:127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		client, server := net.Pipe()
		go serveTestDNS(server, hosts)
		return client, nil
	}}
	tests := []struct {
		name string
		want []string
	}{
		{"a.ssrf.test", []string{"127.0.0.1", "::1"}},
		{"m.ssrf.test", []string{"127.0.0.1"}}, // the resolver hands mapped AAAA answers back as IPv4
		{"nothing.ssrf.test", nil},
	}
	for _, tc := range tests {
		ips, err := r.LookupIPAddr(context.Background(), tc.name)
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: resolved to %v, want an error", tc.name, ips)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got []string
		for _, ip := range ips {
			got = append(got, ip.IP.String())
		}
		slices.Sort(got)
		if !slices.Equal(got, slices.Sorted(slices.Values(tc.want))) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// testPKI is a CA the child trusts and a certificate for every name and
// address the targets answer on.
type testPKI struct {
	caFile string
	cert   tls.Certificate
}

func newTestPKI(t *testing.T, ips []net.IP) testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "probe test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "probe target"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"*.ssrf.test", "hr.acme-payroll.com"}, IPAddresses: ips}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return testPKI{caFile: file, cert: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}}
}

// countingListener counts the TCP connections it accepts: a connection
// counts even if it never gets as far as a request.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// target is a listener the test watches.
type target struct {
	srv   *httptest.Server
	conns *atomic.Int64
	port  string
}

// startTarget serves h on addr (TLS with the test certificate unless
// cert is nil) and counts accepted connections.
func startTarget(t *testing.T, addr string, cert *tls.Certificate, h http.Handler) *target {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	tg := &target{conns: new(atomic.Int64)}
	tg.srv = httptest.NewUnstartedServer(h)
	tg.srv.Listener.Close()
	tg.srv.Listener = countingListener{ln, tg.conns}
	if cert != nil {
		tg.srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
		tg.srv.StartTLS()
	} else {
		tg.srv.Start()
	}
	t.Cleanup(tg.srv.Close)
	_, tg.port, _ = net.SplitHostPort(ln.Addr().String())
	return tg
}

// startProxyTrap is what HTTPS_PROXY and HTTP_PROXY point at: it counts
// connections and closes them.
func startProxyTrap(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return "http://" + ln.Addr().String(), n
}

// publicLocalAddr finds an address of this machine that the outbox does
// not count as private (on a test machine typically a documentation
// range such as 192.0.2.0/24 on its network interface): a target there is
// "public" for the sidecar, so a redirect from it can be tried without
// --allow-private-endpoints.
func publicLocalAddr() (netip.Addr, bool) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().Is4() {
			continue
		}
		if outbox.CheckEndpointURL("https://"+p.Addr().String()+"/", false) != nil {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(p.Addr().String(), "0"))
		if err != nil {
			continue
		}
		ln.Close()
		return p.Addr(), true
	}
	return netip.Addr{}, false
}

// probeChild is one run of the sidecar child process.
type probeChild struct {
	t     *testing.T
	front string
	admin string
	log   string
	cmd   *exec.Cmd
	// exited is closed once the child has exited; err is then its end.
	exited chan struct{}
	err    error
}

func startProbeChild(t *testing.T, env []string) *probeChild {
	t.Helper()
	listen, adminListen := listenAddrs(t)
	c := &probeChild{t: t, front: "http://" + listen, admin: "http://" + adminListen,
		log: filepath.Join(t.TempDir(), "child.log"), exited: make(chan struct{})}
	logf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	// The parent's own SSF_* and proxy settings must not leak in.
	var base []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "SSF_"), strings.EqualFold(k, "https_proxy"), strings.EqualFold(k, "http_proxy"),
			strings.EqualFold(k, "no_proxy"), strings.EqualFold(k, "all_proxy"), k == "SSL_CERT_FILE", k == "SSL_CERT_DIR":
			continue
		}
		base = append(base, kv)
	}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestProbeSSRFChild$")
	c.cmd.Env = append(base, append([]string{probeChildEnv + "=1", "SSF_LISTEN=" + listen, "SSF_ADMIN_LISTEN=" + adminListen,
		"SSF_ISSUER=" + c.front + "/ssf", "SSF_LOG_FORMAT=text", "SSF_LOG_LEVEL=info", "SSF_MAX_BACKOFF=1s",
		"SSF_PUSH_TIMEOUT=5s"}, env...)...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.err = c.cmd.Wait(); logf.Close(); close(c.exited) }()
	t.Cleanup(c.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-c.exited:
			out, _ := os.ReadFile(c.log)
			t.Fatalf("the sidecar exited at start: %v\n%s", c.err, out)
		default:
		}
		if resp, err := http.Get(c.admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar was not ready within 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the child (SIGTERM, then SIGKILL); on a failed test its log is
// shown.
func (c *probeChild) stop() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
	if c.t.Failed() {
		out, _ := os.ReadFile(c.log)
		c.t.Logf("sidecar log:\n%s", out)
	}
}

// createPush asks for a push stream as a receiver would.
func (c *probeChild) createPush(token, endpoint string) (int, string, string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"events_requested": []string{ssf.EventSessionRevoked},
		"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": endpoint}})
	req, _ := http.NewRequest(http.MethodPost, c.front+"/ssf/streams", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var st struct {
		StreamID string `json:"stream_id"`
	}
	_ = json.Unmarshal(body, &st)
	return resp.StatusCode, st.StreamID, string(body)
}

// probeOutput is `receivers check --probe --json`.
type probeOutput struct {
	Probe []probeResult `json:"probe"`
}

func writeReceivers(t *testing.T, names ...string) string {
	t.Helper()
	tokens := map[string]string{"probe-rx": probeRxToken, "redirect-rx": redirectRxToken, "stored-rx": storedRxToken}
	var b strings.Builder
	b.WriteString("receivers:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  - name: %s\n    tokens: [%q]\n", n, tokens[n])
	}
	file := filepath.Join(t.TempDir(), "receivers.yaml")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestProbeRefusesPrivateDestinations: without --allow-private-endpoints,
// a receiver cannot point a push stream at a private, loopback,
// link-local, CGNAT, unspecified, NAT64 or IPv4-mapped address in any
// spelling (creation answers 400 naming the refusal); a name that
// resolves to such an address is created, and `receivers check --probe`
// reports it refused, one line per stream, with a non-zero exit; a
// redirect towards a private target is not followed; environment proxies
// are ignored. No watched private listener and no proxy sees a connection.
// With --allow-private-endpoints a loopback endpoint probes fine, directly.
func TestProbeRefusesPrivateDestinations(t *testing.T) {
	ak, err := authentiktest.Start(authentiktest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	public, hasPublic := publicLocalAddr()
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	if hasPublic {
		ips = append(ips, public.AsSlice())
	} else {
		t.Log("this machine has no address outside the private ranges: the redirect and proxy checks run with --allow-private-endpoints only")
	}
	pki := newTestPKI(t, ips)
	accept := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })

	// Private targets that would accept anything: they must never be reached.
	private := startTarget(t, "127.0.0.1:0", &pki.cert, accept)
	private6 := startTarget(t, "[::1]:0", &pki.cert, accept)
	proxyURL, proxyConns := startProxyTrap(t)

	hostList := []string{
		"loop.ssrf.test=127.0.0.1",
		"loop6.ssrf.test=::1",
		"mapped.ssrf.test=::ffff:127.0.0.1",
		"nat64.ssrf.test=64:ff9b::7f00:1",
		"unspecified.ssrf.test=0.0.0.0",
		"ten.ssrf.test=10.0.0.7",
		"cgnat.ssrf.test=100.64.0.1",
		"metadata.ssrf.test=169.254.169.254",
		"ula.ssrf.test=fd00::1",
		"hr.acme-payroll.com=127.0.0.1", // a public-looking name
		"good.ssrf.test=127.0.0.1",
	}
	if hasPublic {
		hostList = append(hostList, "public.ssrf.test="+public.String())
	}
	env := []string{
		"SSF_UPSTREAM=" + ak.URL(), "SSF_RECEIVERS=" + writeReceivers(t, "probe-rx", "redirect-rx", "stored-rx"),
		"SSL_CERT_FILE=" + pki.caFile, "HTTPS_PROXY=" + proxyURL, "HTTP_PROXY=" + proxyURL,
		"https_proxy=" + proxyURL, "http_proxy=" + proxyURL, probeHostsEnv + "=" + strings.Join(hostList, ";"),
	}
	p, p6 := private.port, private6.port

	t.Run("refused", func(t *testing.T) {
		c := startProbeChild(t, append([]string{"SSF_DATA_DIR=" + t.TempDir(), "SSF_ALLOW_PRIVATE_ENDPOINTS=false"}, env...))

		// Literal addresses, in every spelling: refused when the stream is
		// created, naming the refusal.
		literals := []struct{ form, url string }{
			{"loopback", "https://127.0.0.1:" + p + "/"},
			{"loopback, other /8 address", "https://127.9.9.9:" + p + "/"},
			{"loopback IPv6", "https://[::1]:" + p6 + "/"},
			{"localhost", "https://localhost:" + p + "/"},
			{"private 10/8", "https://10.0.0.7/"},
			{"private 172.16/12", "https://172.16.5.4/"},
			{"private 192.168/16", "https://192.168.1.10/"},
			{"CGNAT", "https://100.64.0.1/"},
			{"link-local (metadata)", "https://169.254.169.254/latest/meta-data/"},
			{"link-local IPv6", "https://[fe80::1]/"},
			{"unique local IPv6", "https://[fd00::1]/"},
			{"unspecified", "https://0.0.0.0:" + p + "/"},
			{"unspecified IPv6", "https://[::]:" + p + "/"},
			{"NAT64", "https://[64:ff9b::7f00:1]:" + p + "/"},
			{"IPv4-mapped IPv6", "https://[::ffff:127.0.0.1]:" + p + "/"},
			{"IPv4-mapped IPv6, hex", "https://[::ffff:7f00:1]:" + p + "/"},
			{"decimal", "https://2130706433:" + p + "/"},
			{"octal", "https://0177.0.0.1:" + p + "/"},
			{"octal, one part", "https://017700000001:" + p + "/"},
			{"hex", "https://0x7f000001:" + p + "/"},
			{"short form", "https://127.1:" + p + "/"},
			{"plain http", "http://hr.acme-payroll.com:" + p + "/"},
		}
		for _, l := range literals {
			code, id, body := c.createPush(probeRxToken, l.url)
			if code != http.StatusBadRequest || id != "" {
				t.Errorf("%s (%s): creation answered %d %s, want 400", l.form, l.url, code, body)
				continue
			}
			if !strings.Contains(body, "not allowed") && !strings.Contains(body, "must use https") {
				t.Errorf("%s: the 400 does not name the refusal: %s", l.form, body)
			}
		}

		// Names: accepted when created, refused when connecting.
		names := []struct{ form, url string }{
			{"name → loopback", "https://loop.ssrf.test:" + p + "/"},
			{"name → loopback IPv6", "https://loop6.ssrf.test:" + p6 + "/"},
			{"name → IPv4-mapped loopback", "https://mapped.ssrf.test:" + p + "/"},
			{"name → NAT64 of loopback", "https://nat64.ssrf.test:" + p + "/"},
			{"name → unspecified", "https://unspecified.ssrf.test:" + p + "/"},
			{"name → private", "https://ten.ssrf.test/"},
			{"name → CGNAT", "https://cgnat.ssrf.test/"},
			{"name → link-local metadata", "https://metadata.ssrf.test/latest/meta-data/"},
			{"name → unique local IPv6", "https://ula.ssrf.test/"},
			{"public-looking name → loopback", "https://hr.acme-payroll.com:" + p + "/"},
		}
		want := map[string]string{} // stream id → form
		for _, n := range names {
			code, id, body := c.createPush(probeRxToken, n.url)
			if code != http.StatusCreated || id == "" {
				t.Fatalf("%s: creation answered %d %s, want 201 (names are checked when connecting)", n.form, code, body)
			}
			want[id] = n.form
		}
		// A public target: it answers, so the probe's refusals above are
		// not a machine that cannot connect anywhere; it redirects towards
		// the private listener on two paths.
		var publicTarget *target
		var okID string
		redirects := map[string]string{}
		if hasPublic {
			publicTarget = startTarget(t, net.JoinHostPort(public.String(), "0"), &pki.cert, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/to-loopback":
					http.Redirect(w, r, "https://127.0.0.1:"+p+"/", http.StatusTemporaryRedirect)
				case "/to-name":
					http.Redirect(w, r, "https://loop.ssrf.test:"+p+"/", http.StatusTemporaryRedirect)
				default:
					w.WriteHeader(http.StatusAccepted)
				}
			}))
			base := "https://public.ssrf.test:" + publicTarget.port
			code, id, body := c.createPush(probeRxToken, base+"/events")
			if code != http.StatusCreated {
				t.Fatalf("public endpoint: %d %s", code, body)
			}
			okID = id
			for _, path := range []string{"/to-loopback", "/to-name"} {
				code, id, body := c.createPush(redirectRxToken, base+path)
				if code != http.StatusCreated {
					t.Fatalf("redirecting endpoint: %d %s", code, body)
				}
				redirects[id] = path
			}
		}

		// The human form: one line per stream naming the refusal.
		file := writeReceivers(t, "probe-rx")
		code, out, errs := cli(t, "receivers", "check", "--receivers", file, "--probe", "--timeout", "20s", "--admin-url", c.admin)
		t.Logf("receivers check --probe:\n%s%s", out, errs)
		if code == exitOK {
			t.Errorf("probe exit %d with refused endpoints, want non-zero\n%s", code, out)
		}
		if !strings.Contains(errs, "refused") || !strings.Contains(errs, "--allow-private-endpoints") {
			t.Errorf("the command's error does not say what was refused and why: %s", errs)
		}
		lines := strings.Split(out, "\n")
		for id, form := range want {
			var line string
			for _, l := range lines {
				if strings.Contains(l, id) {
					line = l
				}
			}
			if !strings.Contains(line, "refused") || !strings.Contains(line, "not allowed") {
				t.Errorf("%s: probe line %q does not name the refusal", form, line)
			}
		}

		// The JSON form: the same, per stream.
		code, out, _ = cli(t, "receivers", "check", "--receivers", file, "--probe", "--json", "--timeout", "20s", "--admin-url", c.admin)
		var po probeOutput
		if err := json.Unmarshal([]byte(out), &po); err != nil {
			t.Fatalf("probe --json is not one JSON document: %v\n%s", err, out)
		}
		if code == exitOK {
			t.Errorf("probe --json exit %d, want non-zero", code)
		}
		seen := 0
		for _, r := range po.Probe {
			form, isRefused := want[r.Stream]
			switch {
			case isRefused:
				seen++
				if r.Outcome != probeRefused || !strings.Contains(r.Error, "not allowed") {
					t.Errorf("%s: probe says %s %q, want refused", form, r.Outcome, r.Error)
				}
			case r.Stream == okID:
				if r.Outcome != "delivered" || r.Status != http.StatusAccepted {
					t.Errorf("public endpoint (env proxies set): probe says %s %d %q, want delivered 202", r.Outcome, r.Status, r.Error)
				}
			default:
				t.Errorf("probe reports a stream it should not: %+v", r)
			}
		}
		if seen != len(want) {
			t.Errorf("probe reported %d of the %d refused streams", seen, len(want))
		}

		if hasPublic {
			code, out, _ := cli(t, "receivers", "check", "--receivers", writeReceivers(t, "redirect-rx"), "--probe", "--json", "--timeout", "20s", "--admin-url", c.admin)
			var po probeOutput
			if err := json.Unmarshal([]byte(out), &po); err != nil {
				t.Fatalf("probe --json: %v\n%s", err, out)
			}
			if code == exitOK || len(po.Probe) != len(redirects) {
				t.Errorf("probe of redirecting endpoints: exit %d, %d results\n%s", code, len(po.Probe), out)
			}
			for _, r := range po.Probe {
				if r.Outcome == "delivered" || !strings.Contains(r.Error, "307") || !strings.Contains(r.Error, "redirect not followed") {
					t.Errorf("redirect %s: probe says %s %d %q, want the 307 reported as not followed", redirects[r.Stream], r.Outcome, r.Status, r.Error)
				}
			}
			if publicTarget.conns.Load() == 0 {
				t.Error("the public target was never reached: the checks above prove nothing")
			}
		}
		if n := private.conns.Load(); n != 0 {
			t.Errorf("the private IPv4 listener accepted %d connection(s)", n)
		}
		if n := private6.conns.Load(); n != 0 {
			t.Errorf("the private IPv6 listener accepted %d connection(s)", n)
		}
		if n := proxyConns.Load(); n != 0 {
			t.Errorf("the environment proxy accepted %d connection(s)", n)
		}
	})

	t.Run("allowed", func(t *testing.T) {
		// The positive control: the same world with --allow-private-endpoints.
		c := startProbeChild(t, append([]string{"SSF_DATA_DIR=" + t.TempDir(), "SSF_ALLOW_PRIVATE_ENDPOINTS=true"}, env...))
		okTLS := startTarget(t, "127.0.0.1:0", &pki.cert, accept)
		okPlain := startTarget(t, "127.0.0.1:0", nil, accept)
		sink := startTarget(t, "127.0.0.1:0", &pki.cert, accept)
		redirector := startTarget(t, "127.0.0.1:0", &pki.cert, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://127.0.0.1:"+sink.port+"/", http.StatusTemporaryRedirect)
		}))
		// A name (not localhost: Go never proxies those) over https and
		// over http, with both proxy variables set; and a loopback literal.
		for _, u := range []string{"https://good.ssrf.test:" + okTLS.port + "/", "http://good.ssrf.test:" + okPlain.port + "/",
			"http://127.0.0.1:" + okPlain.port + "/"} {
			if code, _, body := c.createPush(probeRxToken, u); code != http.StatusCreated {
				t.Fatalf("create %s: %d %s", u, code, body)
			}
		}
		code, out, errs := cli(t, "receivers", "check", "--receivers", writeReceivers(t, "probe-rx"), "--probe", "--json", "--timeout", "20s", "--admin-url", c.admin)
		var po probeOutput
		if err := json.Unmarshal([]byte(out), &po); err != nil {
			t.Fatalf("probe --json: %v\n%s%s", err, out, errs)
		}
		if code != exitOK || len(po.Probe) != 3 {
			t.Errorf("probe of allowed loopback endpoints: exit %d, %d results\n%s%s", code, len(po.Probe), out, errs)
		}
		for _, r := range po.Probe {
			if r.Outcome != "delivered" || r.Status != http.StatusAccepted {
				t.Errorf("%s: probe says %s %d %q, want delivered 202", r.Endpoint, r.Outcome, r.Status, r.Error)
			}
		}
		if okTLS.conns.Load() == 0 || okPlain.conns.Load() == 0 {
			t.Errorf("the endpoints were not reached directly (https %d, http %d connections)", okTLS.conns.Load(), okPlain.conns.Load())
		}

		// Redirects are not followed even towards allowed addresses.
		if code, _, body := c.createPush(redirectRxToken, "https://good.ssrf.test:"+redirector.port+"/"); code != http.StatusCreated {
			t.Fatalf("create redirecting endpoint: %d %s", code, body)
		}
		code, out, _ = cli(t, "receivers", "check", "--receivers", writeReceivers(t, "redirect-rx"), "--probe", "--json", "--timeout", "20s", "--admin-url", c.admin)
		po = probeOutput{}
		if err := json.Unmarshal([]byte(out), &po); err != nil {
			t.Fatalf("probe --json: %v\n%s", err, out)
		}
		if code == exitOK || len(po.Probe) != 1 || !strings.Contains(po.Probe[0].Error, "307") {
			t.Errorf("probe of a redirecting endpoint: exit %d\n%s", code, out)
		}
		if redirector.conns.Load() == 0 {
			t.Error("the redirecting endpoint was never reached")
		}
		if n := sink.conns.Load(); n != 0 {
			t.Errorf("the redirect was followed: its target accepted %d connection(s)", n)
		}
		if n := proxyConns.Load(); n != 0 {
			t.Errorf("the environment proxy accepted %d connection(s)", n)
		}
	})
	t.Run("stored before the flag was turned off", func(t *testing.T) {
		// Streams accepted while private endpoints were allowed: they are
		// reached then (the probe delivers), and after a restart without
		// the flag the sidecar still starts, and the probe reports each
		// refused while their listeners see nothing more.
		dir := t.TempDir()
		plain := startTarget(t, "127.0.0.1:0", nil, accept)
		tls6 := startTarget(t, "[::1]:0", &pki.cert, accept)
		endpoints := []string{
			"http://127.0.0.1:" + plain.port + "/",
			"http://localhost:" + plain.port + "/",
			"http://good.ssrf.test:" + plain.port + "/",
			"http://[::ffff:127.0.0.1]:" + plain.port + "/",
			"https://[::1]:" + tls6.port + "/",
		}
		file := writeReceivers(t, "stored-rx")
		probe := func(c *probeChild) (int, []probeResult, string) {
			t.Helper()
			code, out, errs := cli(t, "receivers", "check", "--receivers", file, "--probe", "--json", "--timeout", "20s", "--admin-url", c.admin)
			var po probeOutput
			if err := json.Unmarshal([]byte(out), &po); err != nil {
				t.Fatalf("probe --json: %v\n%s%s", err, out, errs)
			}
			return code, po.Probe, out + errs
		}
		before := startProbeChild(t, append([]string{"SSF_DATA_DIR=" + dir, "SSF_ALLOW_PRIVATE_ENDPOINTS=true"}, env...))
		for _, u := range endpoints {
			if code, _, body := before.createPush(storedRxToken, u); code != http.StatusCreated {
				t.Fatalf("create %s with the flag on: %d %s", u, code, body)
			}
		}
		code, res, out := probe(before)
		if code != exitOK || len(res) != len(endpoints) {
			t.Fatalf("with the flag on the stored endpoints should probe fine: exit %d\n%s", code, out)
		}
		before.stop()
		n4, n6 := plain.conns.Load(), tls6.conns.Load()
		if n4 == 0 || n6 == 0 {
			t.Fatalf("the listeners were not reached with the flag on (%d, %d): the check below proves nothing", n4, n6)
		}

		after := startProbeChild(t, append([]string{"SSF_DATA_DIR=" + dir, "SSF_ALLOW_PRIVATE_ENDPOINTS=false"}, env...))
		code, res, out = probe(after)
		if code == exitOK || len(res) != len(endpoints) {
			t.Errorf("after the restart without the flag: exit %d, %d results\n%s", code, len(res), out)
		}
		for _, r := range res {
			if r.Outcome != probeRefused || !strings.Contains(r.Error, "not allowed") {
				t.Errorf("%s: probe says %s %q, want refused", r.Endpoint, r.Outcome, r.Error)
			}
		}
		if plain.conns.Load() != n4 || tls6.conns.Load() != n6 {
			t.Errorf("after the restart without the flag the listeners accepted %d and %d more connection(s)",
				plain.conns.Load()-n4, tls6.conns.Load()-n6)
		}
		if n := proxyConns.Load(); n != 0 {
			t.Errorf("the environment proxy accepted %d connection(s)", n)
		}
	})
}
