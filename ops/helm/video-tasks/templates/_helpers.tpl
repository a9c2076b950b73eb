{{/*
Names, labels and the pieces every pod shares. The conventions of `helm create`.
*/}}

{{- define "video-tasks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "video-tasks.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "video-tasks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "video-tasks.labels" -}}
helm.sh/chart: {{ include "video-tasks.chart" . }}
{{ include "video-tasks.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "video-tasks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "video-tasks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "api") */}}
{{- define "video-tasks.componentLabels" -}}
{{ include "video-tasks.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "video-tasks.componentSelector" -}}
{{ include "video-tasks.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "video-tasks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "video-tasks.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "video-tasks.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "video-tasks.appSecretName" -}}
{{- default (printf "%s-app" (include "video-tasks.fullname" .)) .Values.secrets.app.name }}
{{- end }}

{{/*
Stopping. Both processes stop on SIGTERM, the signal Kubernetes sends (the image runs
python as PID 1 in exec form, no shell in between):
- the API (service/api/server.py): stops accepting, lets in-flight requests finish
  within SHUTDOWN_TIMEOUT_S (10 s); its supervisor kills a child still running
  KILL_AFTER_S (15 s) after SIGTERM. So the pod needs the preStop sleep + 15 s + room.
- the worker (service/worker/runner.py): stops claiming, gives running tasks
  SHUTDOWN_GRACE_S, cancels what is left and hands it back (RELEASE_TIMEOUT_S 3 s, twice
  with the notifier), then closes its pool: SHUTDOWN_GRACE_S + the margin below.
tests/test_helm_chart.py checks these against the code's constants.
*/}}
{{- define "video-tasks.apiKillAfterSeconds" -}}15{{- end }}
{{- define "video-tasks.workerHandBackMarginSeconds" -}}15{{- end }}

{{- define "video-tasks.apiTerminationGracePeriodSeconds" -}}
{{- add .Values.api.preStopSleepSeconds (include "video-tasks.apiKillAfterSeconds" .) 5 }}
{{- end }}

{{- define "video-tasks.workerTerminationGracePeriodSeconds" -}}
{{- add (ceil .Values.worker.shutdownGraceSeconds | int) (include "video-tasks.workerHandBackMarginSeconds" .) }}
{{- end }}

{{/*
The database: where each kind of connection goes. URLs carry no password: libpq reads
PGPASSWORD, set from a Secret in each pod (the app role's in the API and worker pods,
the owner role's in the migrate Job only).
*/}}
{{- define "video-tasks.clusterName" -}}
{{- printf "%s-db" (include "video-tasks.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Pooler, and the Service the operator names after it. */}}
{{- define "video-tasks.poolerName" -}}
{{- printf "%s-pooler-rw" (include "video-tasks.clusterName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "video-tasks.cnpgHost" -}}
{{- printf "%s.%s.svc" .service .root.Release.Namespace }}
{{- end }}

{{- define "video-tasks.cnpgUrl" -}}
{{- $v := .root.Values.database }}
{{- printf "postgresql://%s@%s:5432/%s?sslmode=%s" .user (include "video-tasks.cnpgHost" (dict "root" .root "service" .service)) .dbname $v.sslmode }}
{{- end }}

{{/* DATABASE_URL: through PgBouncer (transaction mode), the API's and workers'. */}}
{{- define "video-tasks.databaseUrl" -}}
{{- $v := .Values.database }}
{{- if eq $v.mode "cloudnativepg" }}
{{- include "video-tasks.cnpgUrl" (dict "root" . "user" $v.appUser "dbname" $v.name "service" (include "video-tasks.poolerName" .)) }}
{{- else }}
{{- $v.external.url }}
{{- end }}
{{- end }}

{{/* DATABASE_DIRECT_URL: straight to PostgreSQL as the app role (the doctor). */}}
{{- define "video-tasks.databaseDirectUrl" -}}
{{- $v := .Values.database }}
{{- if eq $v.mode "cloudnativepg" }}
{{- include "video-tasks.cnpgUrl" (dict "root" . "user" $v.appUser "dbname" $v.name "service" (printf "%s-rw" (include "video-tasks.clusterName" .))) }}
{{- else }}
{{- $v.external.directUrl }}
{{- end }}
{{- end }}

{{/* DATABASE_OWNER_URL: the migrations. Without the password every pod may see it. */}}
{{- define "video-tasks.databaseOwnerUrl" -}}
{{- $v := .Values.database }}
{{- if eq $v.mode "cloudnativepg" }}
{{- include "video-tasks.cnpgUrl" (dict "root" . "user" $v.ownerUser "dbname" $v.name "service" (printf "%s-rw" (include "video-tasks.clusterName" .))) }}
{{- else }}
{{- $v.external.ownerUrl }}
{{- end }}
{{- end }}

{{/*
PGBOUNCER_ADMIN_URL: the doctor's console reads. CloudNativePG's PgBouncer admits only
its own local `pgbouncer` user to the console, so with the Pooler the doctor reports
the console checks as unreadable; the settings still need a URL in production.
*/}}
{{- define "video-tasks.pgbouncerAdminUrl" -}}
{{- $v := .Values.database }}
{{- if eq $v.mode "cloudnativepg" }}
{{- include "video-tasks.cnpgUrl" (dict "root" . "user" "pgbouncer" "dbname" "pgbouncer" "service" (include "video-tasks.poolerName" .)) }}
{{- else if $v.external.adminUrl }}
{{- $v.external.adminUrl }}
{{- else }}
{{- $u := urlParse $v.external.url }}
{{- printf "%s://pgbouncer@%s/pgbouncer" $u.scheme $u.host }}
{{- end }}
{{- end }}

{{/* The app role's password: (Secret name, key). */}}
{{- define "video-tasks.appPasswordSecretName" -}}
{{- $v := .Values.database }}
{{- if eq $v.mode "cloudnativepg" }}
{{- default (printf "%s-db-app" (include "video-tasks.fullname" .)) $v.cloudnativepg.appSecret }}
{{- else }}
{{- $v.external.appPasswordSecret.name }}
{{- end }}
{{- end }}

{{- define "video-tasks.appPasswordSecretKey" -}}
{{- if eq .Values.database.mode "cloudnativepg" }}password{{ else }}{{ .Values.database.external.appPasswordSecret.key }}{{ end }}
{{- end }}

{{/* The owner role's password: (Secret name, key). */}}
{{- define "video-tasks.ownerPasswordSecretName" -}}
{{- $v := .Values.database }}
{{- if eq $v.mode "cloudnativepg" }}
{{- default (printf "%s-db-owner" (include "video-tasks.fullname" .)) $v.cloudnativepg.ownerSecret }}
{{- else }}
{{- .Values.database.external.ownerPasswordSecret.name }}
{{- end }}
{{- end }}

{{- define "video-tasks.ownerPasswordSecretKey" -}}
{{- if eq .Values.database.mode "cloudnativepg" }}password{{ else }}{{ .Values.database.external.ownerPasswordSecret.key }}{{ end }}
{{- end }}

{{/*
The environment of every container: the ConfigMap's settings, the app Secret's keys,
and the role password as PGPASSWORD. (dict "root" $ "password" "app"|"owner")
*/}}
{{- define "video-tasks.envFrom" -}}
- configMapRef:
    name: {{ include "video-tasks.fullname" .root }}
- secretRef:
    name: {{ include "video-tasks.appSecretName" .root }}
{{- end }}

{{- define "video-tasks.passwordEnv" -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      {{- if eq .password "owner" }}
      name: {{ include "video-tasks.ownerPasswordSecretName" .root }}
      key: {{ include "video-tasks.ownerPasswordSecretKey" .root }}
      {{- else }}
      name: {{ include "video-tasks.appPasswordSecretName" .root }}
      key: {{ include "video-tasks.appPasswordSecretKey" .root }}
      {{- end }}
{{- end }}

{{/* Writable places on a read-only root filesystem. */}}
{{- define "video-tasks.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{- define "video-tasks.podSecurity" -}}
serviceAccountName: {{ include "video-tasks.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Restart pods when the settings change. */}}
{{- define "video-tasks.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/*
The KEDA query: tasks that need a worker slot now, runnable pending ones plus the running
ones, so busy workers are not scaled away. Two index-only counts: the claim index
(partial, status = 'pending', leading run_after) and the lease index (partial,
lease_expires_at IS NOT NULL: exactly the running tasks). No table scan however large
the table grows; tests/test_helm_chart.py EXPLAINs it.
*/}}
{{- define "video-tasks.kedaQuery" -}}
SELECT (SELECT count(*) FROM video_generation_tasks WHERE status = 'pending' AND run_after <= now()) + (SELECT count(*) FROM video_generation_tasks WHERE lease_expires_at IS NOT NULL)
{{- end }}

{{- define "video-tasks.podAnnotations" -}}
{{- $annotations := dict }}
{{- if .root.Values.metrics.podAnnotations }}
{{- $_ := set $annotations "prometheus.io/scrape" "true" }}
{{- $_ := set $annotations "prometheus.io/port" (toString .port) }}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $annotations = merge $annotations (default dict .extra) }}
{{- if $annotations }}
{{- toYaml $annotations }}
{{- end }}
{{- end }}
