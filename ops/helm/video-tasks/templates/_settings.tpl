{{/*
The settings every process reads (service/settings.py), by their environment names:
the ConfigMap's data, and the migrate Job's env (a pre-install hook runs before the
ConfigMap exists). Secrets are not here: the app Secret (envFrom) and PGPASSWORD.
*/}}
{{- define "video-tasks.settings" -}}
{{- $capacity := include "video-tasks.capacity" . | fromYaml }}
{{- $s3 := .Values.storage.s3 -}}
ENVIRONMENT: {{ .Values.environment | quote }}
LOG_LEVEL: {{ .Values.logLevel | quote }}
{{- with .Values.publicBaseUrl }}
PUBLIC_BASE_URL: {{ . | quote }}
{{- end }}
# The pod's own address; the Service and the probes reach it there.
API_HOST: "0.0.0.0"
API_PORT: {{ .Values.api.port | quote }}
API_PROCESSES: {{ .Values.api.processes | quote }}
# /metrics on its own port (never the Service's), for Prometheus inside the cluster.
METRICS_HOST: "0.0.0.0"
METRICS_PORT: {{ .Values.api.metricsPort | quote }}
WORKER_METRICS_PORT: {{ .Values.worker.metricsPort | quote }}
APP_POOL_MIN: {{ .Values.appPool.min | quote }}
APP_POOL_MAX: {{ .Values.appPool.max | quote }}
POOL_TIMEOUT_S: {{ .Values.appPool.timeoutSeconds | quote }}
WORKER_CONCURRENCY: {{ .Values.worker.concurrency | quote }}
SHUTDOWN_GRACE_S: {{ .Values.worker.shutdownGraceSeconds | quote }}
# Pods at their most and the poolers, for the doctor's arithmetic (the chart's own rule).
DOCTOR_EXPECTED_WORKERS: {{ $capacity.workerPods | quote }}
DOCTOR_EXPECTED_API_PODS: {{ $capacity.apiPods | quote }}
DOCTOR_POOLER_INSTANCES: {{ $capacity.poolerInstances | quote }}
VIDEO_PROVIDER: {{ .Values.videoProvider | quote }}
WECHAT_APPID: {{ .Values.wechat.appid | quote }}
CONTENT_CHECK: {{ .Values.contentCheck | quote }}
STORAGE_BACKEND: s3
S3_BUCKET: {{ $s3.bucket | quote }}
S3_REGION: {{ $s3.region | quote }}
S3_ADDRESSING_STYLE: {{ $s3.addressingStyle | quote }}
{{- with $s3.endpointUrl }}
S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
{{- with $s3.prefix }}
S3_PREFIX: {{ . | quote }}
{{- end }}
{{- with $s3.publicBaseUrl }}
S3_PUBLIC_BASE_URL: {{ . | quote }}
{{- end }}
# No password in any of them: libpq reads PGPASSWORD (set per pod from a Secret).
DATABASE_URL: {{ include "video-tasks.databaseUrl" . | quote }}
DATABASE_DIRECT_URL: {{ include "video-tasks.databaseDirectUrl" . | quote }}
DATABASE_OWNER_URL: {{ include "video-tasks.databaseOwnerUrl" . | quote }}
PGBOUNCER_ADMIN_URL: {{ include "video-tasks.pgbouncerAdminUrl" . | quote }}
# Writable places on the read-only root filesystem (emptyDir volumes).
WORK_DIR: /data/work
MEDIA_DIR: /data/media
XDG_CACHE_HOME: /tmp/cache
PYTHONDONTWRITEBYTECODE: "1"
{{- range $name, $value := .Values.config }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end }}
