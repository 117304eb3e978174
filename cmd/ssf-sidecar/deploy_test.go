package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// The deploy/ files are checked against the configuration contract, since no
// container engine runs in CI: every SSF_* name they use exists, ports agree,
// probes hit the paths the admin server answers, and the image is non-root.

const deployDir = "../../deploy"

var knownEnv = func() map[string]bool {
	m := map[string]bool{"SSF_ADMIN_URL": true} // read by the admin CLI
	for _, o := range options {
		m[o.env] = true
	}
	return m
}()

var envName = regexp.MustCompile(`\bSSF_[A-Z0-9_]+\b`)

func deployFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(deployDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("deploy/ holds only %d files", len(files))
	}
	return files
}

// yamlDocs decodes every document of a YAML file.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: not valid YAML: %v", path, err)
		}
		if m != nil {
			docs = append(docs, m)
		}
	}
	return docs
}

func TestDeployEnvNamesExist(t *testing.T) {
	seen := 0
	for _, f := range deployFiles(t) {
		data, _ := os.ReadFile(f)
		for _, name := range envName.FindAllString(string(data), -1) {
			seen++
			if !knownEnv[name] {
				t.Errorf("%s uses %s, which is not a configuration variable", f, name)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("only %d SSF_* names found in deploy/", seen)
	}
}

// isHelmTemplate tells the chart's templates (Go templates, not YAML until
// rendered; deploy/helm/chartcheck renders and checks them) from plain files.
func isHelmTemplate(path string) bool {
	return strings.Contains(filepath.ToSlash(path), "/helm/ssf-sidecar/templates/")
}

func TestDeployYAMLParses(t *testing.T) {
	n := 0
	for _, f := range deployFiles(t) {
		if isHelmTemplate(f) {
			continue
		}
		if strings.HasSuffix(f, ".yaml") || strings.HasSuffix(f, ".yml") {
			if len(yamlDocs(t, f)) == 0 {
				t.Errorf("%s: no YAML document", f)
			}
			n++
		}
	}
	if n < 8 {
		t.Fatalf("only %d YAML files", n)
	}
}

func TestDeployExampleReceiversAreValid(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(deployDir, "examples", "receivers-*.yaml"))
	if len(files) < 3 {
		t.Fatalf("want at least 3 example receivers files, got %v", files)
	}
	for _, f := range files {
		if _, err := ssf.LoadReceivers(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	// The receivers file embedded in the ConfigMap too.
	for _, doc := range yamlDocs(t, filepath.Join(deployDir, "kubernetes", "configmap.yaml")) {
		data := doc["data"].(map[string]any)
		if _, err := ssf.ParseReceivers([]byte(data["receivers.yaml"].(string))); err != nil {
			t.Errorf("configmap receivers.yaml: %v", err)
		}
	}
}

func portOf(t *testing.T, listen string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("listen address %q: %v", listen, err)
	}
	return p
}

func get(m any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			mm, ok := m.(map[string]any)
			if !ok {
				return nil
			}
			m = mm[k]
		case int:
			s, ok := m.([]any)
			if !ok || k >= len(s) {
				return nil
			}
			m = s[k]
		}
	}
	return m
}

func TestDeployKubernetesAgrees(t *testing.T) {
	dir := filepath.Join(deployDir, "kubernetes")
	cm := get(yamlDocs(t, filepath.Join(dir, "configmap.yaml"))[0], "data").(map[string]any)
	httpPort := portOf(t, cm["SSF_LISTEN"].(string))
	adminPort := portOf(t, cm["SSF_ADMIN_LISTEN"].(string))

	dep := yamlDocs(t, filepath.Join(dir, "deployment.yaml"))[0]
	if get(dep, "spec", "replicas") != 1 {
		t.Errorf("replicas = %v, want 1", get(dep, "spec", "replicas"))
	}
	if get(dep, "spec", "strategy", "type") != "Recreate" {
		t.Errorf("strategy must be Recreate")
	}
	pod := get(dep, "spec", "template", "spec")
	if get(pod, "securityContext", "runAsNonRoot") != true {
		t.Errorf("pod must run as non-root")
	}
	if uid, _ := get(pod, "securityContext", "runAsUser").(int); uid == 0 {
		t.Errorf("runAsUser must be a non-zero uid")
	}
	c := get(pod, "containers", 0)
	ports := map[string]string{}
	for _, p := range get(c, "ports").([]any) {
		ports[get(p, "name").(string)] = strings.TrimSpace(strings.Trim(yamlScalar(get(p, "containerPort")), `"`))
	}
	if ports["http"] != httpPort || ports["admin"] != adminPort {
		t.Errorf("container ports %v do not match SSF_LISTEN %s / SSF_ADMIN_LISTEN %s", ports, httpPort, adminPort)
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got := get(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path = %v, want %s", probe, got, path)
		}
		if got := get(c, probe, "httpGet", "port"); got != "admin" {
			t.Errorf("%s port = %v, want the admin port", probe, got)
		}
	}
	mounted := false
	for _, vm := range get(c, "volumeMounts").([]any) {
		if get(vm, "mountPath") == "/data" {
			mounted = true
		}
	}
	if !mounted || cm["SSF_DATA_DIR"] != "/data" {
		t.Errorf("the data dir must be on the volume")
	}
	// The Services target named container ports that exist.
	for _, svc := range yamlDocs(t, filepath.Join(dir, "service.yaml")) {
		for _, p := range get(svc, "spec", "ports").([]any) {
			if _, ok := ports[get(p, "targetPort").(string)]; !ok {
				t.Errorf("service targets unknown port %v", get(p, "targetPort"))
			}
		}
	}
	if get(pod, "automountServiceAccountToken") != false {
		t.Errorf("the pod must not mount a service-account token: the sidecar never calls the Kubernetes API")
	}
	image, _ := get(c, "image").(string)
	if image == "" || !strings.Contains(image, "/") || strings.HasSuffix(image, ":latest") || !strings.Contains(image, ":") {
		t.Errorf("image %q: want a registry reference with a versioned tag (see deploy/kubernetes/README.md)", image)
	}
	if get(c, "imagePullPolicy") != "IfNotPresent" {
		t.Errorf("imagePullPolicy = %v, want IfNotPresent", get(c, "imagePullPolicy"))
	}
	if !strings.Contains(readFile(t, filepath.Join(dir, "README.md")), "docker push "+image) {
		t.Errorf("deploy/kubernetes/README.md must say how to build and push %s", image)
	}

	// `kubectl apply -f deploy/kubernetes/` applies every file there: no
	// Secret with example values may be among them.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		for _, doc := range yamlDocs(t, filepath.Join(dir, e.Name())) {
			if doc["kind"] == "Secret" {
				t.Errorf("%s holds a Secret: kubectl apply -f deploy/kubernetes/ would overwrite the real one", e.Name())
			}
		}
	}

	// The receiver in the ConfigMap presents OAuth tokens: the issuer they
	// come from must be configured.
	if strings.Contains(cm["receivers.yaml"].(string), "oauth_client_ids") && cm["SSF_OAUTH_ISSUER"] == nil {
		t.Errorf("the ConfigMap's receiver uses oauth_client_ids but SSF_OAUTH_ISSUER is not set")
	}

	// The NetworkPolicy: authentik's http ports only from the sidecar, its
	// metrics port left open.
	np := yamlDocs(t, filepath.Join(dir, "networkpolicy.yaml"))[0]
	open := map[string]string{} // port -> who may reach it
	for _, rule := range get(np, "spec", "ingress").([]any) {
		who := "anyone"
		if from := get(rule, "from"); from != nil {
			who, _ = get(from, 0, "podSelector", "matchLabels", "app.kubernetes.io/name").(string)
			if len(from.([]any)) != 1 {
				who = "several"
			}
		}
		for _, p := range get(rule, "ports").([]any) {
			open[yamlScalar(get(p, "port"))] = who
		}
	}
	for port, want := range map[string]string{"9000\n": "ssf-sidecar", "9443\n": "ssf-sidecar", "9300\n": "anyone"} {
		if open[port] != want {
			t.Errorf("network policy: port %s reachable by %q, want %q (rules: %v)", strings.TrimSpace(port), open[port], want, open)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func yamlScalar(v any) string {
	b, _ := yaml.Marshal(v)
	return string(b)
}

func TestDeployComposeAgrees(t *testing.T) {
	doc := yamlDocs(t, filepath.Join(deployDir, "docker-compose.yml"))[0]
	services := get(doc, "services").(map[string]any)
	for _, name := range []string{"postgresql", "server", "worker", "ssf-sidecar"} {
		if services[name] == nil {
			t.Fatalf("compose lacks service %s", name)
		}
	}
	for name, s := range services {
		if name != "ssf-sidecar" && get(s, "ports") != nil {
			t.Errorf("service %s publishes ports: only the sidecar may", name)
		}
	}
	sc := services["ssf-sidecar"]
	env := get(sc, "environment").(map[string]any)
	listenPort := portOf(t, env["SSF_LISTEN"].(string))
	mapping := get(sc, "ports", 0).(string)
	if !strings.HasSuffix(mapping, ":"+listenPort) {
		t.Errorf("published port %q does not target SSF_LISTEN %s", mapping, listenPort)
	}
	if !strings.HasPrefix(env["SSF_UPSTREAM"].(string), "http://server:") {
		t.Errorf("upstream must be authentik's server service")
	}
	if get(doc, "volumes", "ssf-data") == nil || !strings.HasPrefix(get(sc, "volumes", 0).(string), "ssf-data:/data") {
		t.Errorf("the data dir must be on a named volume")
	}
	// The sidecar gets only its own settings: no env_file that would hand it
	// the whole deploy/.env (the database password among it).
	if get(sc, "env_file") != nil {
		t.Errorf("the sidecar must not load the whole env file: list its variables")
	}
	for name, v := range env {
		if !strings.HasPrefix(name, "SSF_") {
			t.Errorf("the sidecar gets %s, which is not one of its settings", name)
		}
		if s, _ := v.(string); strings.Contains(s, "PG_PASS") {
			t.Errorf("%s carries the database password", name)
		}
	}
	if got, _ := env["SSF_AUTHENTIK_SECRET_KEY"].(string); !strings.HasPrefix(got, "${AUTHENTIK_SECRET_KEY") {
		t.Errorf("SSF_AUTHENTIK_SECRET_KEY = %q: want it taken from AUTHENTIK_SECRET_KEY, so the two cannot drift", got)
	}
	// The admin listener is published, on the host's loopback only, at the
	// port SSF_ADMIN_LISTEN names.
	adminPort := portOf(t, env["SSF_ADMIN_LISTEN"].(string))
	published := false
	for _, p := range get(sc, "ports").([]any) {
		m := p.(string)
		if strings.HasSuffix(m, ":"+adminPort) {
			published = true
			if !strings.HasPrefix(m, "127.0.0.1:") {
				t.Errorf("admin port published as %q: bind it to the host's loopback", m)
			}
		}
	}
	if !published {
		t.Errorf("the admin listener (%s) is not published, though the env file says how to reach it", env["SSF_ADMIN_LISTEN"])
	}
	envExample := readFile(t, filepath.Join(deployDir, "ssf-sidecar.env.example"))
	if !strings.Contains(envExample, "http://127.0.0.1:9090/admin/dashboard/") || !strings.Contains(envExample, "compose -f deploy/docker-compose.yml exec ssf-sidecar") {
		t.Errorf("the env example must say how to reach the dashboard and the CLI")
	}
}

// The files an operator fills with secrets stay out of git and out of the
// image's build context.
func TestDeploySecretsStayOut(t *testing.T) {
	gitignore := readFile(t, "../../.gitignore")
	if !strings.Contains(gitignore, "/deploy/.env\n") {
		t.Errorf(".gitignore must list /deploy/.env")
	}
	dockerignore := readFile(t, "../../.dockerignore")
	for _, want := range []string{".git\n", "**/.env\n", "/data/\n"} {
		if !strings.Contains(dockerignore, want) {
			t.Errorf(".dockerignore must list %q", strings.TrimSpace(want))
		}
	}
}

func TestDeployDockerfile(t *testing.T) {
	f, err := os.Open(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var user, expose, health string
	stages := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "FROM "):
			stages++
		case strings.HasPrefix(line, "USER "):
			user = strings.TrimSpace(strings.TrimPrefix(line, "USER "))
		case strings.HasPrefix(line, "EXPOSE "):
			expose = strings.TrimSpace(strings.TrimPrefix(line, "EXPOSE "))
		case strings.HasPrefix(line, "CMD [\"/usr/local/bin/ssf-sidecar\", \"health\""):
			health = line
		}
	}
	if stages < 2 {
		t.Errorf("want a multi-stage build")
	}
	if user == "" || strings.HasPrefix(user, "0") || strings.HasPrefix(user, "root") {
		t.Errorf("USER %q: the image must run as non-root", user)
	}
	if expose != "9080" {
		t.Errorf("EXPOSE %q does not match the default --listen :9080", expose)
	}
	// health asks the admin listener's /readyz, found from SSF_ADMIN_URL
	// or SSF_ADMIN_LISTEN: an address written into the check would go
	// stale when the operator moves the admin listener.
	if health == "" || strings.Contains(health, "--url") || strings.Contains(health, "9090") {
		t.Errorf("the image's health check %q must follow the admin listener's settings, not name an address", health)
	}
	// The health subcommand it calls exists.
	found := false
	for _, c := range commands() {
		found = found || c.name == "health"
	}
	if !found {
		t.Errorf("the image's health check calls a missing subcommand")
	}
}
