// Package chartcheck renders the Helm chart in deploy/helm/ssf-sidecar with
// the helm tool this module pins (go tool helm) and checks every rendered
// object by strict decoding into the Kubernetes API types: a misspelt or
// misplaced field fails here, not at `helm install`.
package chartcheck

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const chart = "../ssf-sidecar"

// helm runs the pinned helm with the given arguments.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	// helm keeps no state of ours: its config and cache go to the test's
	// temporary directory.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// object is one rendered, strictly decoded object.
type object struct {
	kind, name string
	obj        any
}

// newObject returns the Go type a rendered kind must decode into.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1 PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, true
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	}
	return nil, false
}

// render runs helm template with the values files and decodes every
// document strictly; any unknown field, duplicate key or unknown kind fails.
func render(t *testing.T, valuesFiles ...string) map[string]object {
	t.Helper()
	var args []string
	for _, f := range valuesFiles {
		args = append(args, "--values", f)
	}
	return renderArgs(t, args...)
}

// renderArgs is render with helm template's own arguments (--set, --values).
func renderArgs(t *testing.T, extra ...string) map[string]object {
	t.Helper()
	args := append([]string{"template", "ssf-sidecar", chart, "--namespace", "authentik"}, extra...)
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]object{}
	decodeInto(t, objs, out)
	return objs
}

// decodeInto decodes every document of a YAML stream strictly into its
// Kubernetes type and adds it to objs; any unknown field, duplicate key,
// unknown kind or object named twice fails.
func decodeInto(t *testing.T, objs map[string]object, stream string) {
	t.Helper()
	for _, doc := range strings.Split(stream, "\n---") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("document is not YAML: %v\n%s", err, doc)
		}
		o, ok := newObject(tm.APIVersion, tm.Kind)
		if !ok {
			t.Fatalf("an object of unexpected kind %s %s:\n%s", tm.APIVersion, tm.Kind, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), o); err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", tm.Kind, err, doc)
		}
		name := o.(metav1.ObjectMetaAccessor).GetObjectMeta().GetName()
		key := tm.Kind + "/" + name
		if _, dup := objs[key]; dup {
			t.Fatalf("%s twice", key)
		}
		objs[key] = object{kind: tm.Kind, name: name, obj: o}
	}
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func kinds(objs map[string]object) []string {
	var ks []string
	for k := range objs {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func deployment(t *testing.T, objs map[string]object) *appsv1.Deployment {
	t.Helper()
	o, ok := objs["Deployment/ssf-sidecar"]
	if !ok {
		t.Fatalf("no Deployment ssf-sidecar among %v", kinds(objs))
	}
	return o.obj.(*appsv1.Deployment)
}

func env(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

// The pod's basics every render must keep: no service-account token, a
// non-root user, probes on the admin port, the data dir on a volume, the
// selector matching the pod.
func checkPod(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	pod := d.Spec.Template.Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken must be false")
	}
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Errorf("the pod must run as non-root")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port.String() != "admin" {
		t.Errorf("liveness probe must ask /healthz on the admin port: %+v", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port.String() != "admin" {
		t.Errorf("readiness probe must ask /readyz on the admin port: %+v", c.ReadinessProbe)
	}
	if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("the root filesystem must be read-only")
	}
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod's labels %v", k, v, d.Spec.Template.Labels)
		}
	}
	// Every mount has its volume.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("mount %s has no volume", m.Name)
		}
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/data" }) {
		t.Errorf("nothing is mounted at the data dir /data")
	}
	return c
}

func configMap(t *testing.T, objs map[string]object) map[string]string {
	t.Helper()
	o, ok := objs["ConfigMap/ssf-sidecar"]
	if !ok {
		t.Fatalf("no ConfigMap among %v", kinds(objs))
	}
	return o.obj.(*corev1.ConfigMap).Data
}

func TestChartDefaults(t *testing.T) {
	objs := render(t)
	want := []string{"ConfigMap/ssf-sidecar", "Deployment/ssf-sidecar", "PersistentVolumeClaim/ssf-sidecar-data", "Service/ssf-sidecar", "Service/ssf-sidecar-admin"}
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("default render = %v, want %v", got, want)
	}
	d := deployment(t, objs)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("replicas = %v, want 1 (bbolt)", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy = %q, want Recreate: bbolt is held by one process", d.Spec.Strategy.Type)
	}
	c := checkPod(t, d)
	if c.Image != "registry.example.com/ssf-sidecar:0.1.0" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q (%s): want the chart's appVersion, pulled if not present", c.Image, c.ImagePullPolicy)
	}
	if len(c.Env) != 0 {
		t.Errorf("no secret is referenced by default, got env %v", c.Env)
	}
	var claim string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "data" && v.PersistentVolumeClaim != nil {
			claim = v.PersistentVolumeClaim.ClaimName
		}
	}
	if claim != "ssf-sidecar-data" {
		t.Errorf("the data volume must be the chart's claim, got %q", claim)
	}
	cm := configMap(t, objs)
	for k, v := range map[string]string{"SSF_DATA_DIR": "/data", "SSF_ADMIN_LISTEN": ":9090", "SSF_LISTEN": ":9080", "SSF_UPSTREAM": "http://authentik-server:80"} {
		if cm[k] != v {
			t.Errorf("ConfigMap %s = %q, want %q", k, cm[k], v)
		}
	}
	for _, k := range []string{"SSF_DATABASE_SCHEMA", "SSF_ENCRYPTION_KEY_FILE", "SSF_RECEIVERS", "SSF_SIGNING_KEY"} {
		if _, ok := cm[k]; ok {
			t.Errorf("ConfigMap sets %s by default", k)
		}
	}
}

func TestChartFullValues(t *testing.T) {
	objs := render(t, filepath.Join(chart, "ci", "full-values.yaml"))
	want := []string{"ConfigMap/ssf-sidecar", "Deployment/ssf-sidecar", "NetworkPolicy/ssf-sidecar-authentik-server",
		"PersistentVolumeClaim/ssf-sidecar-data", "PodDisruptionBudget/ssf-sidecar", "Service/ssf-sidecar",
		"Service/ssf-sidecar-admin", "ServiceMonitor/ssf-sidecar"}
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("full render = %v, want %v", got, want)
	}
	d := deployment(t, objs)
	c := checkPod(t, d)
	e := env(c)
	for name, ref := range map[string][2]string{
		"SSF_AUTHENTIK_TOKEN":      {"ssf-sidecar", "SSF_AUTHENTIK_TOKEN"},
		"SSF_AUTHENTIK_SECRET_KEY": {"authentik", "secret_key"},
		"SSF_ADMIN_TOKEN":          {"ssf-sidecar", "SSF_ADMIN_TOKEN"},
	} {
		v, ok := e[name]
		if !ok || v.ValueFrom == nil || v.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s must come from a Secret, got %+v", name, v)
			continue
		}
		if got := [2]string{v.ValueFrom.SecretKeyRef.Name, v.ValueFrom.SecretKeyRef.Key}; got != ref {
			t.Errorf("%s from %v, want %v", name, got, ref)
		}
	}
	if _, ok := e["SSF_DATABASE_URL"]; ok {
		t.Errorf("SSF_DATABASE_URL set without database.url")
	}
	cm := configMap(t, objs)
	for k, v := range map[string]string{
		"SSF_ADMIN_LISTEN":            ":9191",
		"SSF_SIGNING_KEY":             "/etc/ssf-sidecar/signing-keys/signing-2026-12.pem,/etc/ssf-sidecar/signing-keys/signing-2026-06.pem",
		"SSF_RECEIVERS":               "/etc/ssf-sidecar/receivers/receivers.yaml",
		"SSF_TRUSTED_PROXIES":         "10.0.0.0/8,192.168.0.0/16",
		"SSF_OAUTH_ISSUER":            "https://sso.example.com/application/o/ssf/",
		"SSF_ALLOW_PRIVATE_ENDPOINTS": "true",
		"SSF_KEY_OVERLAP":             "336h",
	} {
		if cm[k] != v {
			t.Errorf("ConfigMap %s = %q, want %q", k, cm[k], v)
		}
	}
	var receivers struct {
		Receivers []map[string]any `json:"receivers"`
	}
	if err := yaml.UnmarshalStrict([]byte(cm["receivers.yaml"]), &receivers); err != nil || len(receivers.Receivers) != 1 || receivers.Receivers[0]["name"] != "acme-hr" {
		t.Errorf("receivers.yaml in the ConfigMap = %q (%v)", cm["receivers.yaml"], err)
	}
	// The mounted files are where the settings say.
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	if mounts["signing-keys"] != "/etc/ssf-sidecar/signing-keys" || mounts["receivers"] != "/etc/ssf-sidecar/receivers" {
		t.Errorf("mounts = %v", mounts)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "signing-keys" && (v.Secret == nil || v.Secret.SecretName != "ssf-sidecar-signing-keys" || len(v.Secret.Items) != 2) {
			t.Errorf("signing-keys volume = %+v", v.VolumeSource)
		}
	}
	if ports := c.Ports; len(ports) != 2 || ports[1].Name != "admin" || ports[1].ContainerPort != 9191 {
		t.Errorf("container ports = %+v, want the admin port 9191", ports)
	}

	np := objs["NetworkPolicy/ssf-sidecar-authentik-server"].obj.(*networkingv1.NetworkPolicy)
	if len(np.Spec.Ingress) != 2 {
		t.Fatalf("network policy rules = %+v", np.Spec.Ingress)
	}
	onlySidecar, metrics := np.Spec.Ingress[0], np.Spec.Ingress[1]
	if len(onlySidecar.From) != 1 || onlySidecar.From[0].PodSelector == nil ||
		onlySidecar.From[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "ssf-sidecar" ||
		onlySidecar.From[0].PodSelector.MatchLabels["app.kubernetes.io/instance"] != "ssf-sidecar" {
		t.Errorf("authentik's http ports must admit only the sidecar: %+v", onlySidecar.From)
	}
	if len(onlySidecar.Ports) != 2 || onlySidecar.Ports[0].Port.IntValue() != 9000 || onlySidecar.Ports[1].Port.IntValue() != 9443 {
		t.Errorf("sidecar ports = %+v", onlySidecar.Ports)
	}
	if len(metrics.From) != 0 || len(metrics.Ports) != 1 || metrics.Ports[0].Port.IntValue() != 9300 {
		t.Errorf("authentik's metrics port must stay open: %+v", metrics)
	}

	pdb := objs["PodDisruptionBudget/ssf-sidecar"].obj.(*policyv1.PodDisruptionBudget)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("one replica: the PDB must allow a drain (maxUnavailable 1), got %+v", pdb.Spec)
	}

	sm := objs["ServiceMonitor/ssf-sidecar"].obj.(*monitoringv1.ServiceMonitor)
	admin := objs["Service/ssf-sidecar-admin"].obj.(*corev1.Service)
	for k, v := range sm.Spec.Selector.MatchLabels {
		if admin.Labels[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%s, which the admin Service lacks", k, v)
		}
	}
	main := objs["Service/ssf-sidecar"].obj.(*corev1.Service)
	if main.Labels["app.kubernetes.io/component"] == "admin" {
		t.Errorf("the ServiceMonitor would also select the proxy Service")
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints = %+v", sm.Spec.Endpoints)
	}
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("serviceMonitor.labels not applied: %v", sm.Labels)
	}
	if main.Spec.Ports[0].Port != 8080 || main.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("Service ports = %+v", main.Spec.Ports)
	}
}

// The PostgreSQL backend: several replicas, rolling updates, no volume
// claim, the URL from a Secret and the encryption key as a file.
func TestChartDatabase(t *testing.T) {
	objs := render(t, filepath.Join(chart, "ci", "database-values.yaml"))
	if _, ok := objs["PersistentVolumeClaim/ssf-sidecar-data"]; ok {
		t.Errorf("a database install must not claim a volume")
	}
	d := checkReplicated(t, objs, 2)
	c := d.Spec.Template.Spec.Containers[0]
	url := env(c)["SSF_DATABASE_URL"]
	if url.ValueFrom == nil || url.ValueFrom.SecretKeyRef == nil || url.ValueFrom.SecretKeyRef.Name != "ssf-sidecar-database" || url.ValueFrom.SecretKeyRef.Key != "SSF_DATABASE_URL" {
		t.Errorf("SSF_DATABASE_URL = %+v, want it from the Secret", url)
	}
	cm := configMap(t, objs)
	if cm["SSF_ENCRYPTION_KEY_FILE"] != "/etc/ssf-sidecar/encryption/encryption.key" || cm["SSF_DATABASE_SCHEMA"] != "ssf_sidecar" {
		t.Errorf("ConfigMap database settings = %q, %q", cm["SSF_ENCRYPTION_KEY_FILE"], cm["SSF_DATABASE_SCHEMA"])
	}
	if _, ok := cm["receivers.yaml"]; ok {
		t.Errorf("receivers.existingSecret set: the ConfigMap must not also carry a receivers file")
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		switch v.Name {
		case "data":
			if v.EmptyDir == nil {
				t.Errorf("data volume with a database = %+v, want an emptyDir", v.VolumeSource)
			}
		case "receivers":
			if v.Secret == nil || v.Secret.SecretName != "ssf-sidecar-receivers" {
				t.Errorf("receivers volume = %+v, want the Secret", v.VolumeSource)
			}
		}
	}
}

// Values that cannot work are refused at render time, with a reason.
func TestChartRefuses(t *testing.T) {
	for _, tc := range []struct {
		set, want string
	}{
		{"replicaCount=2", "needs database.url"},
		{"replicaCount=3,persistence.enabled=false", "needs database.url"},
		{"replicaCount=0", "must be at least 1"},
		{"database.url.existingSecret=db", "needs database.encryptionKey.existingSecret"},
		{"issuer=https://sso.example.com/ssf/", "must not end with a slash"},
		{"upstream=", "upstream (authentik's base URL) is required"},
		{"serviceMonitor.enabled=true,admin.service.enabled=false", "needs admin.service.enabled"},
		{"receivers.list[0].name=acme,receivers.list[0].tokens[0]=s3cr3t-token-value", `receiver "acme" has tokens`},
	} {
		out, err := helm(t, "template", "ssf-sidecar", chart, "--set", tc.set)
		if err == nil {
			t.Errorf("--set %s rendered", tc.set)
			continue
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("--set %s: want %q in\n%s", tc.set, tc.want, out)
		}
	}
}

func TestChartLint(t *testing.T) {
	for _, values := range [][]string{nil, {"--values", filepath.Join(chart, "ci", "full-values.yaml")}, {"--values", filepath.Join(chart, "ci", "database-values.yaml")},
		{"--set", "database.url.existingSecret=db,database.encryptionKey.existingSecret=db"}} {
		if out, err := helm(t, append([]string{"lint", "--strict", chart}, values...)...); err != nil {
			t.Errorf("helm lint %v:\n%s", values, out)
		}
	}
}

// checkReplicated holds what several replicas on PostgreSQL need: the
// replica count, rolling updates that never go below it (maxUnavailable 0,
// maxSurge 1), a PodDisruptionBudget keeping one pod and selecting exactly
// the Deployment's pods, no volume claim, a preStop pause, and the pods
// spread over nodes.
func checkReplicated(t *testing.T, objs map[string]object, replicas int32) *appsv1.Deployment {
	t.Helper()
	d := deployment(t, objs)
	checkPod(t, d)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
		t.Errorf("replicas = %v, want %d", d.Spec.Replicas, replicas)
	}
	st := d.Spec.Strategy
	if st.Type != appsv1.RollingUpdateDeploymentStrategyType || st.RollingUpdate == nil ||
		st.RollingUpdate.MaxUnavailable == nil || st.RollingUpdate.MaxUnavailable.String() != "0" ||
		st.RollingUpdate.MaxSurge == nil || st.RollingUpdate.MaxSurge.String() != "1" {
		t.Errorf("strategy = %+v, want RollingUpdate with maxUnavailable 0 and maxSurge 1", st)
	}
	var pdb *policyv1.PodDisruptionBudget
	for _, o := range objs {
		if p, ok := o.obj.(*policyv1.PodDisruptionBudget); ok {
			pdb = p
		}
	}
	if pdb == nil {
		t.Fatalf("no PodDisruptionBudget among %v", kinds(objs))
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.String() != "1" || pdb.Spec.MaxUnavailable != nil {
		t.Errorf("PDB = %+v, want minAvailable 1 alone", pdb.Spec)
	}
	if pdb.Spec.Selector == nil || len(pdb.Spec.Selector.MatchLabels) == 0 || len(pdb.Spec.Selector.MatchExpressions) != 0 {
		t.Fatalf("PDB selector = %+v, want labels", pdb.Spec.Selector)
	}
	for k, v := range pdb.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("the PDB selects %s=%s, which the pods lack (%v)", k, v, d.Spec.Template.Labels)
		}
	}
	if !maps.Equal(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("PDB selector %v differs from the Deployment's %v", pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels)
	}
	for k := range objs {
		if strings.HasPrefix(k, "PersistentVolumeClaim/") {
			t.Errorf("%s: the replicas keep nothing on disk", k)
		}
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			t.Errorf("volume %s is a claim: one claim cannot serve several replicas", v.Name)
		}
	}
	c := d.Spec.Template.Spec.Containers[0]
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds < 1 {
		t.Errorf("lifecycle = %+v: a stopping pod must pause while it leaves the Service", c.Lifecycle)
	}
	spread := d.Spec.Template.Spec.TopologySpreadConstraints
	if len(spread) != 1 || spread[0].TopologyKey != "kubernetes.io/hostname" || spread[0].WhenUnsatisfiable != corev1.ScheduleAnyway ||
		spread[0].LabelSelector == nil || !maps.Equal(spread[0].LabelSelector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("topologySpreadConstraints = %+v, want the pods spread over nodes", spread)
	}
	return d
}

// secretRef is the Secret name and key an environment variable comes from.
func secretRef(t *testing.T, c corev1.Container, name string) [2]string {
	t.Helper()
	v, ok := env(c)[name]
	if !ok || v.ValueFrom == nil || v.ValueFrom.SecretKeyRef == nil || v.Value != "" {
		t.Errorf("%s must come from a Secret (secretKeyRef), got %+v", name, v)
		return [2]string{}
	}
	return [2]string{v.ValueFrom.SecretKeyRef.Name, v.ValueFrom.SecretKeyRef.Key}
}

// database.url alone: two replicas, rolling updates, a PDB, no claim; more
// replicas when asked.
func TestChartDatabaseDefaults(t *testing.T) {
	set := "database.url.existingSecret=ssf-sidecar-database,database.encryptionKey.existingSecret=ssf-sidecar-database"
	objs := renderArgs(t, "--set", set)
	want := []string{"ConfigMap/ssf-sidecar", "Deployment/ssf-sidecar", "PodDisruptionBudget/ssf-sidecar", "Service/ssf-sidecar", "Service/ssf-sidecar-admin"}
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("database render = %v, want %v", got, want)
	}
	d := checkReplicated(t, objs, 2)
	c := d.Spec.Template.Spec.Containers[0]
	if got := secretRef(t, c, "SSF_DATABASE_URL"); got != [2]string{"ssf-sidecar-database", "SSF_DATABASE_URL"} {
		t.Errorf("SSF_DATABASE_URL from %v", got)
	}
	// The encryption key: a file from the Secret, where the setting says.
	cm := configMap(t, objs)
	var mount string
	for _, m := range c.VolumeMounts {
		if m.Name == "encryption-key" {
			mount = m.MountPath
		}
	}
	var keyVol *corev1.SecretVolumeSource
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "encryption-key" {
			keyVol = v.Secret
		}
	}
	if keyVol == nil || keyVol.SecretName != "ssf-sidecar-database" || len(keyVol.Items) != 1 ||
		cm["SSF_ENCRYPTION_KEY_FILE"] != mount+"/"+keyVol.Items[0].Path {
		t.Errorf("encryption key: file %q, mount %q, volume %+v", cm["SSF_ENCRYPTION_KEY_FILE"], mount, keyVol)
	}
	if _, ok := env(c)["SSF_ENCRYPTION_KEY"]; ok {
		t.Errorf("the key is given twice (file and variable)")
	}

	objs = renderArgs(t, "--set", set+",replicaCount=3")
	checkReplicated(t, objs, 3)
	// One replica on a database: a PDB would block drains, none by default.
	objs = renderArgs(t, "--set", set+",replicaCount=1")
	if _, ok := objs["PodDisruptionBudget/ssf-sidecar"]; ok {
		t.Errorf("one replica on a database: a default PDB with minAvailable 1 would block node drains")
	}
}

// The plain manifests in deploy/kubernetes/: the shared files with either
// postgresql/ (two replicas) or bbolt/ (one), decoded strictly.
func kubernetesManifests(t *testing.T, variant string) map[string]object {
	t.Helper()
	objs := map[string]object{}
	for _, dir := range []string{"../../kubernetes", filepath.Join("../../kubernetes", variant)} {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no manifests in %s (%v)", dir, err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			decodeInto(t, objs, string(b))
		}
	}
	return objs
}

// TestKubernetesManifests: the shared files with postgresql/ are two
// replicas on a database; with bbolt/, one replica on a claim.
func TestKubernetesManifests(t *testing.T) {
	shared := []string{"ConfigMap/ssf-sidecar", "Deployment/ssf-sidecar", "NetworkPolicy/authentik-server-only-via-ssf-sidecar",
		"Service/ssf-sidecar", "Service/ssf-sidecar-admin"}
	for variant, extra := range map[string]string{"postgresql": "PodDisruptionBudget/ssf-sidecar", "bbolt": "PersistentVolumeClaim/ssf-sidecar-data"} {
		objs := kubernetesManifests(t, variant)
		want := append(slices.Clone(shared), extra)
		slices.Sort(want)
		if got := kinds(objs); !slices.Equal(got, want) {
			t.Errorf("deploy/kubernetes + %s/ = %v, want %v", variant, got, want)
		}
		d := deployment(t, objs)
		checkServesPods(t, objs, d)
		if variant == "postgresql" {
			checkKubernetesPostgreSQL(t, objs)
		} else {
			checkKubernetesBbolt(t, d)
		}
	}
}

func checkKubernetesPostgreSQL(t *testing.T, objs map[string]object) {
	t.Helper()
	d := checkReplicated(t, objs, 2)
	c := d.Spec.Template.Spec.Containers[0]
	for name, ref := range map[string][2]string{
		"SSF_DATABASE_URL":   {"ssf-sidecar-database", "SSF_DATABASE_URL"},
		"SSF_ENCRYPTION_KEY": {"ssf-sidecar-database", "SSF_ENCRYPTION_KEY"},
	} {
		if got := secretRef(t, c, name); got != ref {
			t.Errorf("%s from %v, want %v", name, got, ref)
		}
	}
	if v := env(c)["SSF_DATABASE_SCHEMA"]; v.Value != "ssf_sidecar" {
		t.Errorf("SSF_DATABASE_SCHEMA = %+v", v)
	}
}

func checkKubernetesBbolt(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	c := checkPod(t, d)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("replicas %v, strategy %q: want 1 and Recreate (bbolt is held by one process)", d.Spec.Replicas, d.Spec.Strategy.Type)
	}
	claim := ""
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "data" && v.PersistentVolumeClaim != nil {
			claim = v.PersistentVolumeClaim.ClaimName
		}
	}
	if claim != "ssf-sidecar-data" {
		t.Errorf("the data dir must be on the claim ssf-sidecar-data, got %q", claim)
	}
	for _, name := range []string{"SSF_DATABASE_URL", "SSF_ENCRYPTION_KEY"} {
		if _, ok := env(c)[name]; ok {
			t.Errorf("the bbolt Deployment sets %s", name)
		}
	}
}

// checkServesPods: the Services and the NetworkPolicy's sidecar rule select
// the Deployment's pods, so either variant fits the shared files.
func checkServesPods(t *testing.T, objs map[string]object, d *appsv1.Deployment) {
	t.Helper()
	labels := d.Spec.Template.Labels
	for _, name := range []string{"Service/ssf-sidecar", "Service/ssf-sidecar-admin"} {
		svc := objs[name].obj.(*corev1.Service)
		for k, v := range svc.Spec.Selector {
			if labels[k] != v {
				t.Errorf("%s selects %s=%s, which the pods lack", name, k, v)
			}
		}
	}
	np := objs["NetworkPolicy/authentik-server-only-via-ssf-sidecar"].obj.(*networkingv1.NetworkPolicy)
	from := np.Spec.Ingress[0].From
	if len(from) != 1 || from[0].PodSelector == nil {
		t.Fatalf("network policy's first rule = %+v", np.Spec.Ingress[0])
	}
	for k, v := range from[0].PodSelector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the network policy admits %s=%s, which the pods lack", k, v)
		}
	}
}
