package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"gopkg.in/yaml.v3"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
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

// kubeVariants are deploy/kubernetes/'s Deployments: the shared files in
// the directory take one of them.
var kubeVariants = []struct {
	dir      string
	replicas int
	strategy string
}{
	{"postgresql", 2, "RollingUpdate"},
	{"bbolt", 1, "Recreate"},
}

func TestDeployKubernetesAgrees(t *testing.T) {
	dir := filepath.Join(deployDir, "kubernetes")
	cm := get(yamlDocs(t, filepath.Join(dir, "configmap.yaml"))[0], "data").(map[string]any)
	httpPort := portOf(t, cm["SSF_LISTEN"].(string))
	adminPort := portOf(t, cm["SSF_ADMIN_LISTEN"].(string))
	for _, v := range kubeVariants {
		checkKubeDeployment(t, dir, v.dir, v.replicas, v.strategy, httpPort, adminPort)
	}
	if cm["SSF_DATA_DIR"] != "/data" {
		t.Errorf("SSF_DATA_DIR = %v, want /data, where the Deployments mount the data dir", cm["SSF_DATA_DIR"])
	}

	// `kubectl apply -f deploy/kubernetes/ -f deploy/kubernetes/<variant>/`
	// applies every file there: no Secret with example values may be
	// among them.
	for _, d := range []string{dir, filepath.Join(dir, "postgresql"), filepath.Join(dir, "bbolt")} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".yaml") {
				continue
			}
			for _, doc := range yamlDocs(t, filepath.Join(d, e.Name())) {
				if doc["kind"] == "Secret" {
					t.Errorf("%s holds a Secret: kubectl apply would overwrite the real one", filepath.Join(d, e.Name()))
				}
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

// checkKubeDeployment checks one variant's Deployment against the shared
// ConfigMap and Services: replicas and strategy, non-root, ports, probes,
// the data dir, the image and the database settings.
func checkKubeDeployment(t *testing.T, dir, variant string, replicas int, strategy, httpPort, adminPort string) {
	t.Helper()
	dep := yamlDocs(t, filepath.Join(dir, variant, "deployment.yaml"))[0]
	if get(dep, "spec", "replicas") != replicas || get(dep, "spec", "strategy", "type") != strategy {
		t.Errorf("%s: replicas %v, strategy %v: want %d and %s", variant, get(dep, "spec", "replicas"), get(dep, "spec", "strategy", "type"), replicas, strategy)
	}
	pod := get(dep, "spec", "template", "spec")
	if get(pod, "securityContext", "runAsNonRoot") != true {
		t.Errorf("%s: pod must run as non-root", variant)
	}
	if uid, _ := get(pod, "securityContext", "runAsUser").(int); uid == 0 {
		t.Errorf("%s: runAsUser must be a non-zero uid", variant)
	}
	c := get(pod, "containers", 0)
	ports := map[string]string{}
	for _, p := range get(c, "ports").([]any) {
		ports[get(p, "name").(string)] = strings.TrimSpace(strings.Trim(yamlScalar(get(p, "containerPort")), `"`))
	}
	if ports["http"] != httpPort || ports["admin"] != adminPort {
		t.Errorf("%s: container ports %v do not match SSF_LISTEN %s / SSF_ADMIN_LISTEN %s", variant, ports, httpPort, adminPort)
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": readinessPath} {
		if got := get(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s: %s path = %v, want %s", variant, probe, got, path)
		}
		if got := get(c, probe, "httpGet", "port"); got != "admin" {
			t.Errorf("%s: %s port = %v, want the admin port", variant, probe, got)
		}
	}
	mounted := false
	for _, vm := range get(c, "volumeMounts").([]any) {
		if get(vm, "mountPath") == "/data" {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("%s: nothing is mounted at the data dir", variant)
	}
	// The Services target named container ports that exist.
	for _, svc := range yamlDocs(t, filepath.Join(dir, "service.yaml")) {
		for _, p := range get(svc, "spec", "ports").([]any) {
			if _, ok := ports[get(p, "targetPort").(string)]; !ok {
				t.Errorf("%s: service targets unknown port %v", variant, get(p, "targetPort"))
			}
		}
	}
	if get(pod, "automountServiceAccountToken") != false {
		t.Errorf("%s: the pod must not mount a service-account token: the sidecar never calls the Kubernetes API", variant)
	}
	image, _ := get(c, "image").(string)
	if image == "" || !strings.Contains(image, "/") || strings.HasSuffix(image, ":latest") || !strings.Contains(image, ":") {
		t.Errorf("%s: image %q: want a registry reference with a versioned tag (see deploy/kubernetes/README.md)", variant, image)
	}
	if get(c, "imagePullPolicy") != "IfNotPresent" {
		t.Errorf("%s: imagePullPolicy = %v, want IfNotPresent", variant, get(c, "imagePullPolicy"))
	}
	if !strings.Contains(readFile(t, filepath.Join(dir, "README.md")), "docker push "+image) {
		t.Errorf("deploy/kubernetes/README.md must say how to build and push %s", image)
	}
	env := map[string]any{}
	for _, e := range asList(get(c, "env")) {
		env[get(e, "name").(string)] = e
	}
	if replicas == 1 {
		if len(env) != 0 {
			t.Errorf("%s: one replica on bbolt sets %v", variant, env)
		}
		return
	}
	// Several replicas: the database URL and the encryption key from the
	// database Secret, never as values in the file.
	for _, name := range []string{"SSF_DATABASE_URL", "SSF_ENCRYPTION_KEY"} {
		ref := get(env[name], "valueFrom", "secretKeyRef")
		if get(ref, "name") != "ssf-sidecar-database" || get(ref, "key") != name || get(env[name], "value") != nil {
			t.Errorf("%s: %s = %v, want it from the Secret ssf-sidecar-database", variant, name, env[name])
		}
	}
	if get(env["SSF_DATABASE_SCHEMA"], "value") != "ssf_sidecar" {
		t.Errorf("%s: SSF_DATABASE_SCHEMA = %v", variant, env["SSF_DATABASE_SCHEMA"])
	}
	if !strings.Contains(readFile(t, filepath.Join(dir, "README.md")), "create secret generic ssf-sidecar-database") {
		t.Errorf("deploy/kubernetes/README.md must say how to create the database Secret")
	}
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
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

// readinessPath is the readiness probe of every manifest: it must stay 200
// while the database is unreachable, since the replica still proxies
// authentik (TestDeployReadinessWithoutDatabase holds it).
const readinessPath = "/readyz"

// TestDeployHelmProbesAgree: the chart's default probes are the manifests'.
func TestDeployHelmProbesAgree(t *testing.T) {
	values := yamlDocs(t, filepath.Join(deployDir, "helm", "ssf-sidecar", "values.yaml"))[0]
	if got := get(values, "readinessProbe", "httpGet", "path"); got != readinessPath {
		t.Errorf("chart readinessProbe path = %v, want %s", got, readinessPath)
	}
	if got := get(values, "livenessProbe", "httpGet", "path"); got != "/healthz" {
		t.Errorf("chart livenessProbe path = %v, want /healthz", got)
	}
	if get(values, "replicaCount") != nil {
		t.Errorf("chart replicaCount = %v: empty, so that database.url gives two replicas and bbolt one", get(values, "replicaCount"))
	}
}

// composeEnv expands ${NAME}, ${NAME:-default} and ${NAME:?message} as
// docker compose does, from vars.
var composeVar = regexp.MustCompile(`\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}`)

func composeEnv(s string, vars map[string]string) string {
	return composeVar.ReplaceAllStringFunc(s, func(m string) string {
		p := composeVar.FindStringSubmatch(m)
		if v, ok := vars[p[1]]; ok && v != "" {
			return v
		}
		if p[2] == "-" {
			return p[3]
		}
		return ""
	})
}

// haproxySections reads an HAProxy configuration into its sections
// ("frontend authentik", "backend sidecars", …), each a list of its
// directives with surplus blanks folded.
func haproxySections(t *testing.T, path string) map[string][]string {
	t.Helper()
	sections := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(readFile(t, path), "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Join(strings.Fields(line), " ")
		if line[0] != ' ' && line[0] != '\t' {
			cur = fields
			sections[cur] = nil
			continue
		}
		sections[cur] = append(sections[cur], fields)
	}
	return sections
}

func directive(lines []string, prefix string) string {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// TestDeployComposeReplicas: docker-compose.replicas.yml runs authentik as
// docker-compose.yml does, two sidecar replicas on authentik's PostgreSQL
// (their own role and schema, the encryption key from a secret file), and
// one balancer in front of them that checks their readiness path.
func TestDeployComposeReplicas(t *testing.T) {
	base := get(yamlDocs(t, filepath.Join(deployDir, "docker-compose.yml"))[0], "services").(map[string]any)
	doc := yamlDocs(t, filepath.Join(deployDir, "docker-compose.replicas.yml"))[0]
	services := get(doc, "services").(map[string]any)
	var names []string
	for name := range services {
		names = append(names, name)
	}
	slices.Sort(names)
	if want := []string{"balancer", "postgresql", "server", "ssf-db-init", "ssf-sidecar", "worker"}; !slices.Equal(names, want) {
		t.Fatalf("services = %v, want %v", names, want)
	}
	// authentik exactly as in the one-replica file.
	for _, name := range []string{"postgresql", "server", "worker"} {
		if !reflect.DeepEqual(services[name], base[name]) {
			t.Errorf("service %s differs from docker-compose.yml's", name)
		}
	}
	for name, s := range services {
		if name != "balancer" && get(s, "ports") != nil {
			t.Errorf("service %s publishes ports: only the balancer may", name)
		}
	}

	sc := services["ssf-sidecar"]
	if get(sc, "deploy", "replicas") != 2 {
		t.Errorf("ssf-sidecar deploy.replicas = %v, want 2", get(sc, "deploy", "replicas"))
	}
	if get(sc, "container_name") != nil || get(sc, "env_file") != nil {
		t.Errorf("ssf-sidecar: no container_name (replicas) and no env_file (its own settings only)")
	}
	env := get(sc, "environment").(map[string]any)
	for name, v := range env {
		if !strings.HasPrefix(name, "SSF_") {
			t.Errorf("the sidecar gets %s, which is not one of its settings", name)
		}
		if s, _ := v.(string); strings.Contains(s, "PG_PASS}") || strings.Contains(s, "${PG_PASS") {
			t.Errorf("%s carries authentik's database password", name)
		}
	}
	vars := map[string]string{"SIDECAR_PG_PASS": "0123abcd"}
	dbURL, err := neturl.Parse(composeEnv(env["SSF_DATABASE_URL"].(string), vars))
	if err != nil {
		t.Fatalf("SSF_DATABASE_URL: %v", err)
	}
	pgDB := composeEnv(get(services["postgresql"], "environment", "POSTGRES_DB").(string), vars)
	if dbURL.Scheme != "postgres" || dbURL.Hostname() != "postgresql" || dbURL.Path != "/"+pgDB || dbURL.User.Username() != "ssf_sidecar" {
		t.Errorf("SSF_DATABASE_URL = %s: want the role ssf_sidecar on authentik's postgresql service, database %s", dbURL.Redacted(), pgDB)
	}
	if pass, _ := dbURL.User.Password(); pass != vars["SIDECAR_PG_PASS"] {
		t.Errorf("the database password is not SIDECAR_PG_PASS")
	}
	if env["SSF_DATABASE_SCHEMA"] != "ssf_sidecar" {
		t.Errorf("SSF_DATABASE_SCHEMA = %v, want ssf_sidecar", env["SSF_DATABASE_SCHEMA"])
	}
	if _, ok := env["SSF_ENCRYPTION_KEY"]; ok {
		t.Errorf("the encryption key must come from the secret file, not the environment")
	}
	secrets := asList(get(sc, "secrets"))
	if len(secrets) != 1 {
		t.Fatalf("ssf-sidecar secrets = %v, want the encryption key", secrets)
	}
	secret, _ := secrets[0].(string)
	if env["SSF_ENCRYPTION_KEY_FILE"] != "/run/secrets/"+secret || get(doc, "secrets", secret, "file") == nil {
		t.Errorf("SSF_ENCRYPTION_KEY_FILE = %v, secret %q (%v): want the key from a Compose secret file",
			env["SSF_ENCRYPTION_KEY_FILE"], secret, get(doc, "secrets", secret))
	}
	keyFile := composeEnv(get(doc, "secrets", secret, "file").(string), nil)
	if !strings.Contains(readFile(t, "../../.gitignore"), "/deploy/"+strings.TrimPrefix(keyFile, "./")+"\n") {
		t.Errorf(".gitignore must list the default key file deploy/%s", keyFile)
	}
	for _, v := range asList(get(sc, "volumes")) {
		if s, _ := v.(string); strings.HasPrefix(s, "ssf-data:") {
			t.Errorf("the replicas must not share a bbolt volume: %s", s)
		}
	}
	if !strings.HasPrefix(env["SSF_UPSTREAM"].(string), "http://server:") {
		t.Errorf("upstream must be authentik's server service")
	}
	if get(sc, "depends_on", "ssf-db-init", "condition") != "service_completed_successfully" {
		t.Errorf("the replicas must start after ssf-db-init made their role and schema")
	}

	// ssf-db-init: the init SQL, as authentik's database owner, with the
	// password the URL uses.
	init := services["ssf-db-init"]
	initEnv := get(init, "environment").(map[string]any)
	if initEnv["PGHOST"] != "postgresql" || initEnv["PGUSER"] != get(services["postgresql"], "environment", "POSTGRES_USER") ||
		initEnv["PGPASSWORD"] != "${PG_PASS}" || composeEnv(initEnv["SIDECAR_PG_PASS"].(string), vars) != vars["SIDECAR_PG_PASS"] {
		t.Errorf("ssf-db-init environment = %v", initEnv)
	}
	mount, _ := asList(get(init, "volumes"))[0].(string)
	src, _, _ := strings.Cut(mount, ":")
	if _, err := os.Stat(filepath.Join(deployDir, src)); err != nil || !strings.HasSuffix(src, "ssf-sidecar-init.sql") {
		t.Errorf("ssf-db-init mounts %q: %v", mount, err)
	}

	// The balancer: the one entry point, in front of the replicas' proxy
	// port, checking their readiness path on the admin port.
	lb := services["balancer"]
	if image, _ := get(lb, "image").(string); !strings.HasPrefix(image, "haproxy:") || strings.HasSuffix(image, ":latest") {
		t.Errorf("balancer image %q: want the official haproxy image with a versioned tag", image)
	}
	cfgMount, _ := asList(get(lb, "volumes"))[0].(string)
	cfgSrc, _, _ := strings.Cut(cfgMount, ":")
	cfg := haproxySections(t, filepath.Join(deployDir, cfgSrc))
	listenPort, adminPort := portOf(t, env["SSF_LISTEN"].(string)), portOf(t, env["SSF_ADMIN_LISTEN"].(string))
	binds := map[string]string{}
	for _, fe := range []string{"frontend authentik", "frontend admin"} {
		bind := directive(cfg[fe], "bind ")
		if bind == "" {
			t.Fatalf("haproxy.cfg: %s has no bind (sections %v)", fe, cfg)
		}
		binds[fe] = portOf(t, strings.TrimPrefix(bind, "bind "))
	}
	if directive(cfg["frontend authentik"], "option forwardfor") == "" {
		t.Errorf("haproxy.cfg: the front door must set X-Forwarded-For")
	}
	for backend, port := range map[string]string{"backend sidecars": listenPort, "backend admin": adminPort} {
		lines := cfg[backend]
		server := directive(lines, "server-template ")
		f := strings.Fields(server)
		if len(f) < 4 || f[3] != "ssf-sidecar:"+port || !strings.Contains(server, " check") || !strings.Contains(server, "resolvers docker") {
			t.Errorf("haproxy.cfg %s: %q, want every ssf-sidecar replica's port %s, checked, found through Docker's DNS", backend, server, port)
		}
		if n, _ := strconv.Atoi(f[2]); n < 2 {
			t.Errorf("haproxy.cfg %s: %d server slots for two replicas", backend, n)
		}
		if port == listenPort && !strings.Contains(server, "check port "+adminPort) {
			t.Errorf("haproxy.cfg %s: the health check must ask the admin port %s: %q", backend, adminPort, server)
		}
		if !strings.Contains(directive(lines, "http-check send "), " uri "+readinessPath+" ") || directive(lines, "http-check expect status 200") == "" {
			t.Errorf("haproxy.cfg %s: the health check must ask %s and expect 200: %v", backend, readinessPath, lines)
		}
	}
	if ns := directive(cfg["resolvers docker"], "nameserver "); !strings.HasSuffix(ns, " 127.0.0.11:53") {
		t.Errorf("haproxy.cfg: resolvers docker must ask Docker's DNS, got %q", ns)
	}
	published := map[string]string{}
	for _, p := range asList(get(lb, "ports")) {
		m := composeEnv(p.(string), nil)
		i := strings.LastIndex(m, ":")
		published[m[i+1:]] = m[:i]
	}
	if _, ok := published[binds["frontend authentik"]]; !ok {
		t.Errorf("the front door (%s) is not published: %v", binds["frontend authentik"], published)
	}
	if host := published[binds["frontend admin"]]; !strings.HasPrefix(host, "127.0.0.1:") {
		t.Errorf("the admin frontend (%s) must be published on the host's loopback only, got %q", binds["frontend admin"], host)
	}
	// The replicas believe X-Forwarded-For from the balancer's fixed
	// address only, inside the network's fixed subnet.
	lbIP := composeEnv(get(lb, "networks", "public", "ipv4_address").(string), nil)
	if got := composeEnv(env["SSF_TRUSTED_PROXIES"].(string), nil); got != lbIP+"/32" {
		t.Errorf("SSF_TRUSTED_PROXIES = %q, want the balancer's address %s/32", got, lbIP)
	}
	_, subnet, err := net.ParseCIDR(composeEnv(get(doc, "networks", "public", "ipam", "config", 0, "subnet").(string), nil))
	if err != nil || !subnet.Contains(net.ParseIP(lbIP)) {
		t.Errorf("the balancer's address %s is not in the public network's subnet (%v)", lbIP, err)
	}
	if !slices.Contains(asList(get(sc, "networks")), "public") {
		t.Errorf("the replicas must share the public network with the balancer")
	}
	example := readFile(t, filepath.Join(deployDir, "ssf-sidecar.env.example"))
	for _, name := range []string{"SIDECAR_PG_PASS=", "SIDECAR_ENCRYPTION_KEY_FILE=", "SIDECAR_BALANCER_IP=", "SIDECAR_PUBLIC_SUBNET="} {
		if !strings.Contains(example, name) {
			t.Errorf("the env example does not mention %s", name)
		}
	}
}

// roleURL is base with the given user and password.
func roleURL(t *testing.T, base, user, pass string) string {
	t.Helper()
	u, err := neturl.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.User = neturl.UserPassword(user, pass)
	return u.String()
}

// pgConn connects to url for the rest of the test.
func pgConn(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// pgExec runs SQL as the test server's superuser.
func pgExec(t *testing.T, url, sql string) {
	t.Helper()
	if _, err := pgConn(t, url).Exec(context.Background(), sql); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
}

// dropRoleAtEnd drops the role and what it owns when the test ends.
func dropRoleAtEnd(t *testing.T, url, role string) {
	t.Cleanup(func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop role %s: %v", role, err)
			return
		}
		defer conn.Close(ctx)
		id := pgx.Identifier{role}.Sanitize()
		if _, err := conn.Exec(ctx, "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '"+role+"') THEN EXECUTE 'DROP OWNED BY "+id+" CASCADE; DROP ROLE "+id+"'; END IF; END $$"); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
}

// migrateAs runs `ssf-sidecar migrate` as the role, twice: at the first
// start and at a restart, when the schema exists already.
func migrateAs(t *testing.T, url, schema string) {
	t.Helper()
	for i := range 2 {
		var out bytes.Buffer
		if code := run(context.Background(), []string{"migrate", "--database-url", url, "--database-schema", schema}, &out, &out); code != exitOK {
			t.Fatalf("migrate as the role (start %d): exit %d\n%s", i+1, code, out.String())
		}
	}
}

// dbPrivileges reports whether role is a superuser and may create schemas
// in the database, and who owns schema.
func dbPrivileges(t *testing.T, url, role, schema string) (super, createDB bool, owner string) {
	t.Helper()
	err := pgConn(t, url).QueryRow(context.Background(), `SELECT r.rolsuper, has_database_privilege(r.rolname, current_database(), 'CREATE'),
		coalesce((SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $2), '')
		FROM pg_roles r WHERE r.rolname = $1`, role, schema).Scan(&super, &createDB, &owner)
	if err != nil {
		t.Fatal(err)
	}
	return super, createDB, owner
}

// TestDeployReadmeDatabaseRole runs the SQL the README's "Several
// replicas" section gives for the sidecar's role, each way it offers, then
// migrates as that role (a non-superuser) at a first start and a restart.
func TestDeployReadmeDatabaseRole(t *testing.T) {
	readme := readFile(t, "../../README.md")
	start := strings.Index(readme, "\n## Several replicas\n")
	if start < 0 {
		t.Fatal("README has no Several replicas section")
	}
	section := readme[start+1:]
	section = section[:strings.Index(section, "\n## ")]
	blocks := regexp.MustCompile("(?s)```sql\n(.*?)```").FindAllStringSubmatch(section, -1)
	if len(blocks) != 2 {
		t.Fatalf("want two SQL blocks (schema made for the role, or CREATE on the database), got %d", len(blocks))
	}
	for i, b := range blocks {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			base, name := pgtest.Schema(t)
			u, err := neturl.Parse(base)
			if err != nil {
				t.Fatal(err)
			}
			dbName := strings.TrimPrefix(u.Path, "/")
			const pass = "a-long-random-password"
			sql := b[1]
			if !strings.Contains(sql, "CREATE ROLE ssf_sidecar LOGIN PASSWORD '"+pass+"'") {
				t.Fatalf("block %d does not create the role ssf_sidecar:\n%s", i, sql)
			}
			// The test's own role and schema, in the test database.
			sql = strings.ReplaceAll(sql, "ssf_sidecar", name)
			sql = strings.ReplaceAll(sql, "DATABASE authentik ", "DATABASE "+pgx.Identifier{dbName}.Sanitize()+" ")
			dropRoleAtEnd(t, base, name)
			pgExec(t, base, sql)
			migrateAs(t, roleURL(t, base, name, pass), name)
			super, createDB, owner := dbPrivileges(t, base, name, name)
			if super || owner != name {
				t.Errorf("superuser %v, schema owner %q: want a plain role owning its schema", super, owner)
			}
			if strings.Contains(sql, "CREATE SCHEMA") && createDB {
				t.Errorf("the role was meant to need no right on the database")
			}
			// The section names every table the migrations made.
			rows, err := pgConn(t, base).Query(context.Background(), "SELECT tablename FROM pg_tables WHERE schemaname = $1", name)
			if err != nil {
				t.Fatal(err)
			}
			tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil || len(tables) == 0 {
				t.Fatalf("tables in the schema: %v (%v)", tables, err)
			}
			for _, table := range tables {
				if !strings.Contains(section, "`"+table+"`") {
					t.Errorf("the migrations make the table %s, which the README's Several replicas section does not name", table)
				}
			}
		})
	}
}

// TestDeployComposeDatabaseInit runs deploy/postgres/ssf-sidecar-init.sql
// with psql as ssf-db-init does, twice (every `up` runs it), then migrates
// as the role it made: no superuser, no CREATE on the database.
func TestDeployComposeDatabaseInit(t *testing.T) {
	base, name := pgtest.Schema(t)
	psql, err := exec.LookPath("psql")
	if err != nil {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatalf("psql is needed (it comes with PostgreSQL): %v", err)
		}
		t.Skipf("SKIPPED: no psql: %v", err)
	}
	dropRoleAtEnd(t, base, name)
	const pass = "0123456789abcdef"
	for i := range 2 {
		cmd := exec.Command(psql, base, "-v", "ON_ERROR_STOP=1", "-v", "role="+name, "-v", "schema="+name,
			"-f", filepath.Join(deployDir, "postgres", "ssf-sidecar-init.sql"))
		cmd.Env = append(os.Environ(), "SIDECAR_PG_PASS="+pass)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("psql run %d: %v\n%s", i+1, err, out)
		}
	}
	migrateAs(t, roleURL(t, base, name, pass), name)
	super, createDB, owner := dbPrivileges(t, base, name, name)
	if super || createDB || owner != name {
		t.Errorf("superuser %v, CREATE on the database %v, schema owner %q: want a plain role owning its schema and nothing more", super, createDB, owner)
	}
}

// unusedLoopback returns a loopback address nothing listens on.
func unusedLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// probeSidecar is a sidecar child process (`serve`, configured through
// SSF_* variables) and the addresses to probe it on.
type probeSidecar struct {
	front, admin string
	client       *http.Client
	done         chan error
	log          *bytes.Buffer
}

// startProbeSidecar runs `serve` in a child process (this test binary,
// re-executed as the crash test's child) in front of upstream, with the
// given database URL, and waits until it is up.
func startProbeSidecar(t *testing.T, upstream, dbURL, schema string) *probeSidecar {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the sidecar child process is the crash test's, built on linux only")
	}
	s := &probeSidecar{front: "http://" + unusedLoopback(t), admin: "http://" + unusedLoopback(t),
		client: &http.Client{Timeout: 5 * time.Second}, done: make(chan error, 1), log: &bytes.Buffer{}}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChildProcess$")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1",
		"SSF_LISTEN="+strings.TrimPrefix(s.front, "http://"), "SSF_ADMIN_LISTEN="+strings.TrimPrefix(s.admin, "http://"),
		"SSF_UPSTREAM="+upstream, "SSF_ISSUER="+s.front+"/ssf", "SSF_DATA_DIR="+t.TempDir(),
		"SSF_DATABASE_URL="+dbURL, "SSF_DATABASE_SCHEMA="+schema, "SSF_ENCRYPTION_KEY="+testEncryptionKey,
		"SSF_LOG_FORMAT=text", "SSF_LOG_LEVEL=warn", "OTEL_TRACES_EXPORTER=none")
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-s.done
		}
	})
	// Up: the admin listener answers (whatever it says).
	s.waitFor(t, "the admin listener to answer", func() bool { code, _ := s.get(s.admin + "/healthz"); return code != 0 })
	return s
}

// get returns the status (0: no answer) and the body.
func (s *probeSidecar) get(url string) (int, string) {
	resp, err := s.client.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *probeSidecar) waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		select {
		case err := <-s.done:
			t.Fatalf("the sidecar exited (%v) waiting for %s:\n%s", err, what, s.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30 s:\n%s", what, s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkServesWithoutDatabase: with the database away, the readiness and
// liveness paths the manifests probe answer 200, authentik is proxied, and
// the SSF routes answer 503 with Retry-After.
func (s *probeSidecar) checkServesWithoutDatabase(t *testing.T) {
	t.Helper()
	if code, body := s.get(s.admin + readinessPath); code != http.StatusOK {
		t.Errorf("readiness %s with the database away: %d %s", readinessPath, code, body)
	}
	code, body := s.get(s.admin + "/healthz")
	if code != http.StatusOK || !strings.Contains(body, "degraded") {
		t.Errorf("/healthz with the database away: %d %s, want 200 and degraded", code, body)
	}
	if code, body := s.get(s.front + "/if/flow/default-authentication-flow/"); code != http.StatusOK || body != "authentik" {
		t.Errorf("authentik through the sidecar with the database away: %d %q", code, body)
	}
	resp, err := s.client.Get(s.front + "/ssf/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("an SSF route with the database away: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// forwardedDatabase is a schema of its own on the test server, reached
// through a forwarder that can cut the database off (fwd.cut).
func forwardedDatabase(t *testing.T) (url, schema string, fwd *forwarder) {
	t.Helper()
	base, schema := pgtest.Schema(t)
	pu, err := neturl.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	fwd = startForwarder(t, pu.Host)
	pu.Host = fwd.ln.Addr().String()
	return pu.String(), schema, fwd
}

// TestDeployReadinessWithoutDatabase: the readiness path every manifest
// probes stays 200 while a replica's database is unreachable — at start,
// and when it goes away under a running replica — since the replica still
// proxies authentik; a probe that failed would take every replica, and
// authentik with them, out of the Service during a database outage.
func TestDeployReadinessWithoutDatabase(t *testing.T) {
	authentik := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "authentik")
	}))
	t.Cleanup(authentik.Close)

	t.Run("unreachable at start", func(t *testing.T) {
		s := startProbeSidecar(t, authentik.URL, "postgres://ssf@"+unusedLoopback(t)+"/ssf?sslmode=disable&connect_timeout=2", "ssf_sidecar")
		s.waitFor(t, "readiness", func() bool { code, _ := s.get(s.admin + readinessPath); return code == http.StatusOK })
		s.checkServesWithoutDatabase(t)
	})

	t.Run("goes away while serving", func(t *testing.T) {
		url, schema, fwd := forwardedDatabase(t)
		s := startProbeSidecar(t, authentik.URL, url, schema)
		jwks := func() int { code, _ := s.get(s.front + "/ssf/jwks.json"); return code }
		s.waitFor(t, "the SSF routes on the database", func() bool { return jwks() == http.StatusOK })
		fwd.cut(true)
		s.waitFor(t, "the SSF routes to answer 503", func() bool { return jwks() == http.StatusServiceUnavailable })
		s.checkServesWithoutDatabase(t)
		fwd.cut(false)
		s.waitFor(t, "the SSF routes to answer again", func() bool { return jwks() == http.StatusOK })
	})
}
