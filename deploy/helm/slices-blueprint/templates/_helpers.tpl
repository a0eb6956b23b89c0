{{/*
Names, labels and the pieces several templates share.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "slices-blueprint.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: `<release>-<chart>`, or just the release name when it already
contains the chart name. 40 characters at most, so that suffixes such as `-postgresql-0` and
the CronJob-style `-migrate-<revision>` still fit the 63 of a label value and a DNS label.
*/}}
{{- define "slices-blueprint.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of cluster-scoped objects: unique per release *and* namespace. */}}
{{- define "slices-blueprint.clusterName" -}}
{{- printf "%s-%s" (include "slices-blueprint.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slices-blueprint.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select this release's pods (never change them: selectors are immutable). */}}
{{- define "slices-blueprint.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slices-blueprint.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "slices-blueprint.labels" -}}
helm.sh/chart: {{ include "slices-blueprint.chart" . }}
{{ include "slices-blueprint.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slices-blueprint
{{- end }}

{{/*
Labels of one component's objects: call with (dict "ctx" $ "component" "serve").
*/}}
{{- define "slices-blueprint.componentLabels" -}}
{{ include "slices-blueprint.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "slices-blueprint.componentSelectorLabels" -}}
{{ include "slices-blueprint.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "slices-blueprint.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slices-blueprint.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: by digest when one is given. */}}
{{- define "slices-blueprint.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (toString (default .default .image.tag)) }}
{{- end }}
{{- end }}

{{- define "slices-blueprint.image" -}}
{{- include "slices-blueprint.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/* Names of the Secrets. */}}
{{- define "slices-blueprint.keysSecretName" -}}
{{- default (printf "%s-keys" (include "slices-blueprint.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "slices-blueprint.postgresqlName" -}}
{{- printf "%s-postgresql" (include "slices-blueprint.fullname" .) }}
{{- end }}

{{/*
Where DATABASE_URL comes from, as "<secret name>/<key>":
  bundled                                  -> the bundled database's Secret, key database-url
  external + postgresql.external.existingSecret -> that Secret and key (CloudNativePG: uri)
  external + secrets.existingSecret        -> the operator's Secret, key database-url
  external otherwise                       -> the chart-made keys Secret, key database-url
*/}}
{{- define "slices-blueprint.databaseUrlSecret" -}}
{{- if eq .Values.postgresql.mode "bundled" }}
{{- printf "%s/database-url" (include "slices-blueprint.postgresqlName" .) }}
{{- else if .Values.postgresql.external.existingSecret }}
{{- printf "%s/%s" .Values.postgresql.external.existingSecret .Values.postgresql.external.existingSecretKey }}
{{- else }}
{{- printf "%s/database-url" (include "slices-blueprint.keysSecretName" .) }}
{{- end }}
{{- end }}

{{/* The public URL: site.publicUrl, else the first Ingress host, else the in-cluster URL. */}}
{{- define "slices-blueprint.publicUrl" -}}
{{- if .Values.site.publicUrl }}
{{- .Values.site.publicUrl | trimSuffix "/" }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $tls := false }}
{{- range .Values.ingress.tls }}
{{- if has $host .hosts }}{{ $tls = true }}{{ end }}
{{- end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "slices-blueprint.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}
{{- end }}

{{/* Where the Secret's key file and the site's clouds.yaml are mounted. */}}
{{- define "slices-blueprint.keysDir" -}}/etc/slices-blueprint/keys{{- end }}
{{- define "slices-blueprint.siteCloudsDir" -}}/etc/slices-blueprint/site-clouds{{- end }}

{{/*
Every setting of the ConfigMap, as a dict of variable name -> string. The migrate hook Job
gets the same settings inline (it runs before the ConfigMap exists on install).
DATABASE_MAX_CONNECTIONS is not among them: each Deployment and the Job set their own (see
databaseEnv).
*/}}
{{- define "slices-blueprint.settings" -}}
{{- $v := .Values }}
{{- $s := dict
  "SITE_ID" $v.site.id
  "PUBLIC_URL" (include "slices-blueprint.publicUrl" .)
  "LEPTOS_SITE_ADDR" "0.0.0.0:8080"
  "WORKER_HTTP_ADDR" "0.0.0.0:8081"
  "SLICES_ISSUER" $v.auth.issuer
  "SLICES_JWKS_REFRESH_SECS" (toString $v.auth.jwksRefreshSecs)
  "ADMIN_USER_IDS" (join "," $v.auth.adminUserIds)
  "OIDC_SCOPES" $v.auth.oidc.scopes
  "K8S_NAMESPACE_PREFIX" $v.kubernetes.namespacePrefix
  "POD_READY_TIMEOUT_SECS" (toString $v.kubernetes.podReadyTimeoutSecs)
  "OPENSTACK_ALLOWED_ENDPOINTS" (join "," $v.openstack.allowedEndpoints)
  "OPENSTACK_ALLOW_INSECURE_TLS" (toString $v.openstack.allowInsecureTls)
  "VM_READY_TIMEOUT_SECS" (toString $v.openstack.vmReadyTimeoutSecs)
  "WORKER_CONCURRENCY" (toString $v.worker.concurrency)
  "WORKER_SLOTS_PER_EXPERIMENT" (toString $v.worker.slotsPerExperiment)
  "QUOTA_RESOURCES_PER_EXPERIMENT" (toString $v.quotas.resourcesPerExperiment)
  "QUOTA_VCPUS_PER_EXPERIMENT" (toString $v.quotas.vcpusPerExperiment)
  "QUOTA_RAM_MIB_PER_EXPERIMENT" (toString $v.quotas.ramMibPerExperiment)
  "LOG_FORMAT" $v.logging.format
  "RUN_WORKER" "false"
  "MIGRATE_ON_START" "false"
  "DEV_ISSUER" "false"
  "CLOUDS_ENCRYPTION_KEY_FILE" (printf "%s/clouds-encryption-key" (include "slices-blueprint.keysDir" .))
}}
{{- with $v.auth.jwksUrl }}{{ $_ := set $s "SLICES_JWKS_URL" . }}{{ end }}
{{- with $v.auth.audience }}{{ $_ := set $s "SLICES_AUDIENCE" . }}{{ end }}
{{- with $v.auth.oidc.clientId }}{{ $_ := set $s "OIDC_CLIENT_ID" . }}{{ end }}
{{- with $v.auth.oidc.redirectUrl }}{{ $_ := set $s "OIDC_REDIRECT_URL" . }}{{ end }}
{{- with $v.logging.filter }}{{ $_ := set $s "RUST_LOG" . }}{{ end }}
{{- if $v.openstack.siteClouds.existingSecret }}
{{- $_ := set $s "SITE_CLOUDS_YAML" (printf "%s/clouds.yaml" (include "slices-blueprint.siteCloudsDir" .)) }}
{{- end }}
{{- range $name, $value := $v.config }}
{{- $_ := set $s $name (toString $value) }}
{{- end }}
{{- toYaml $s }}
{{- end }}

{{/*
DATABASE_MAX_CONNECTIONS of one component: the pool sizes differ per component while the
ConfigMap is shared, so it is an env entry of each container (env wins over envFrom).
Call with the pool size.
*/}}
{{- define "slices-blueprint.databaseEnv" -}}
- name: DATABASE_MAX_CONNECTIONS
  value: {{ . | toString | quote }}
{{- end }}

{{/*
Environment variables from Secrets, shared by serve and worker. DATABASE_URL,
OIDC_CLIENT_SECRET and CLOUDS_ENCRYPTION_KEY_PREVIOUS are read from the environment only; the
clouds.yaml key is a mounted file instead (CLOUDS_ENCRYPTION_KEY_FILE, see volumes).
*/}}
{{- define "slices-blueprint.secretEnv" -}}
{{- $db := splitList "/" (include "slices-blueprint.databaseUrlSecret" .) -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ index $db 0 }}
      key: {{ index $db 1 }}
- name: OIDC_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "slices-blueprint.keysSecretName" . }}
      key: oidc-client-secret
      optional: true
- name: CLOUDS_ENCRYPTION_KEY_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ include "slices-blueprint.keysSecretName" . }}
      key: clouds-encryption-key-previous
      optional: true
{{- end }}

{{/* The pod-level security context of the application's pods (the image's uid/gid 65532). */}}
{{- define "slices-blueprint.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container-level security context of every container of the chart. */}}
{{- define "slices-blueprint.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Volumes of serve and worker: the key file, /tmp, and the site's clouds.yaml if any. */}}
{{- define "slices-blueprint.volumes" -}}
- name: keys
  secret:
    secretName: {{ include "slices-blueprint.keysSecretName" . }}
    # Readable by the pod's group (fsGroup 65532) only.
    defaultMode: 0440
    items:
      - key: clouds-encryption-key
        path: clouds-encryption-key
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.openstack.siteClouds.existingSecret }}
- name: site-clouds
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.openstack.siteClouds.key }}
        path: clouds.yaml
{{- end }}
{{- end }}

{{- define "slices-blueprint.volumeMounts" -}}
- name: keys
  mountPath: {{ include "slices-blueprint.keysDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.openstack.siteClouds.existingSecret }}
- name: site-clouds
  mountPath: {{ include "slices-blueprint.siteCloudsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Spread over nodes and zones unless the values give their own constraints; matchLabelKeys keeps
a rolling update's new ReplicaSet from counting the old one's pods.
Call with (dict "ctx" $ "component" "serve" "custom" .Values.serve.topologySpreadConstraints).
*/}}
{{- define "slices-blueprint.topologySpread" -}}
{{- if .custom }}
{{- toYaml .custom }}
{{- else }}
{{- range $i, $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
{{- if $i }}{{ "\n" }}{{ end -}}
- maxSkew: 1
  topologyKey: {{ $key }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "slices-blueprint.componentSelectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end }}
{{- end }}

{{/* Pod annotations: config/secret checksums (a changed setting rolls the pods), Prometheus. */}}
{{- define "slices-blueprint.podAnnotations" -}}
{{- $ctx := .ctx -}}
checksum/config: {{ include "slices-blueprint.settings" $ctx | sha256sum }}
{{- /* Only what the values say: generated keys never change once made (lookup keeps them). */}}
checksum/secrets: {{ toJson (list $ctx.Values.secrets $ctx.Values.postgresql.external $ctx.Values.postgresql.bundled.password) | sha256sum }}
{{- if $ctx.Values.metrics.prometheusAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* HTTP probes on the named port `http`. */}}
{{- define "slices-blueprint.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 2
  timeoutSeconds: 2
  # Up to 60 s to start (connecting to the database, the first JWKS read).
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}

{{/*
A 32-byte key as 64 hex characters, base64-encoded for a Secret's data: the given value, else
the one already stored (`old`, base64 as lookup returns it), else a new random one.
*/}}
{{- define "slices-blueprint.hexKey" -}}
{{- if .given }}
{{- .given | b64enc }}
{{- else if .old }}
{{- .old }}
{{- else }}
{{- randBytes 32 | b64dec | printf "%x" | b64enc }}
{{- end }}
{{- end }}
