{{/* The name of every object of this release. */}}
{{- define "ssf-sidecar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ssf-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ssf-sidecar.labels" -}}
{{ include "ssf-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* true when the PostgreSQL backend is configured. */}}
{{- define "ssf-sidecar.database" -}}
{{- if .Values.database.url.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The number of replicas: replicaCount, or 2 with a database and 1 without. */}}
{{- define "ssf-sidecar.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount -}}
{{- if include "ssf-sidecar.database" . -}}2{{- else -}}1{{- end -}}
{{- else -}}
{{- int .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/* true when the PodDisruptionBudget is rendered: as set, or by default
with a database and more than one replica. */}}
{{- define "ssf-sidecar.pdb" -}}
{{- $enabled := .Values.podDisruptionBudget.enabled -}}
{{- if kindIs "invalid" $enabled -}}
{{- $enabled = and (include "ssf-sidecar.database" .) (gt (int (include "ssf-sidecar.replicas" .)) 1) -}}
{{- end -}}
{{- if $enabled -}}true{{- end -}}
{{- end -}}

{{/* Refuse combinations that cannot work. */}}
{{- define "ssf-sidecar.validate" -}}
{{- if lt (int (include "ssf-sidecar.replicas" .)) 1 -}}
{{- fail "replicaCount must be at least 1: the sidecar is the only way in to authentik" -}}
{{- end -}}
{{- if and (gt (int (include "ssf-sidecar.replicas" .)) 1) (not (include "ssf-sidecar.database" .)) -}}
{{- fail "replicaCount > 1 needs database.url (the PostgreSQL backend): bbolt is held by one process" -}}
{{- end -}}
{{- if and (include "ssf-sidecar.database" .) (not .Values.database.encryptionKey.existingSecret) -}}
{{- fail "database.url needs database.encryptionKey.existingSecret: secrets in the database are sealed with it" -}}
{{- end -}}
{{- if hasSuffix "/" .Values.issuer -}}
{{- fail "issuer must not end with a slash" -}}
{{- end -}}
{{- range .Values.receivers.list -}}
{{- if hasKey . "tokens" -}}
{{- fail (printf "receivers.list: receiver %q has tokens, which would land in a ConfigMap: keep a receivers file with static tokens in a Secret (receivers.existingSecret)" (.name | default "?")) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.upstream -}}
{{- fail "upstream (authentik's base URL) is required" -}}
{{- end -}}
{{- end -}}

{{/* The --signing-key list: the mounted files, in the order given. */}}
{{- define "ssf-sidecar.signingKeyPaths" -}}
{{- $paths := list -}}
{{- range .Values.secrets.signingKeys.keys -}}
{{- $paths = append $paths (printf "/etc/ssf-sidecar/signing-keys/%s" .) -}}
{{- end -}}
{{- join "," $paths -}}
{{- end -}}
