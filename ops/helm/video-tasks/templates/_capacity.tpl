{{/*
The connection arithmetic (service/capacity.py has the same rule in Python; the README's
"Scaling past one machine" explains it; tests/test_helm_chart.py checks that the two
agree on a grid of values):

  client connections = (API pods x API_PROCESSES + worker pods) x APP_POOL_MAX
      ceil(client connections / pooler instances) <= max_client_conn of each PgBouncer
  server connections = pooler instances x min((default_pool_size + reserve_pool_size)
                       x pools, max_db_connections if set) + other connections
      server connections <= max_connections - superuser_reserved - reserved

Pods are counted at their most: the autoscaler's maximum (or the fixed replica count)
plus the rolling update's maxSurge. One pool per PgBouncer: the app role on one database.

"video-tasks.capacity" returns the numbers as YAML; "video-tasks.checkCapacity" fails
the render, naming the numbers and what to change, when either bound is broken.
*/}}

{{- define "video-tasks.capacity" -}}
{{- $v := .Values }}
{{- $apiMost := ternary $v.api.autoscaling.maxReplicas $v.api.replicas $v.api.autoscaling.enabled }}
{{- $workerMost := ternary $v.worker.keda.maxReplicaCount $v.worker.replicas $v.worker.keda.enabled }}
{{- $apiPods := add $apiMost $v.api.maxSurge }}
{{- $workerPods := add $workerMost $v.worker.maxSurge }}
{{- $p := $v.database.pooler }}
{{- $pg := $v.database.postgres }}
{{- $instances := int $p.instances }}
{{- $clients := mul (add (mul $apiPods $v.api.processes) $workerPods) $v.appPool.max }}
{{- $perPooler := div (sub (add $clients $instances) 1) $instances }}
{{- $pools := 1 }}
{{- $serversPerPooler := mul (add $p.defaultPoolSize $p.reservePoolSize) $pools }}
{{- if and (gt (int $p.maxDbConnections) 0) (lt (int $p.maxDbConnections) (int $serversPerPooler)) }}
{{- $serversPerPooler = int $p.maxDbConnections }}
{{- end }}
{{- $reserved := add $pg.superuserReservedConnections $pg.reservedConnections }}
{{- $servers := add (mul $instances $serversPerPooler) $v.database.otherConnections }}
{{- $usable := sub $pg.maxConnections $reserved }}
apiPods: {{ $apiPods }}
apiProcesses: {{ $v.api.processes }}
workerPods: {{ $workerPods }}
appPoolMax: {{ $v.appPool.max }}
poolerInstances: {{ $instances }}
maxClientConn: {{ $p.maxClientConn }}
defaultPoolSize: {{ $p.defaultPoolSize }}
reservePoolSize: {{ $p.reservePoolSize }}
maxDbConnections: {{ $p.maxDbConnections }}
pools: {{ $pools }}
maxConnections: {{ $pg.maxConnections }}
reservedConnections: {{ $reserved }}
otherConnections: {{ $v.database.otherConnections }}
clients: {{ $clients }}
clientsPerPooler: {{ $perPooler }}
serversPerPooler: {{ $serversPerPooler }}
servers: {{ $servers }}
usable: {{ $usable }}
{{- end }}

{{- define "video-tasks.checkCapacity" -}}
{{- $c := include "video-tasks.capacity" . | fromYaml }}
{{- $problems := list }}
{{- if gt (int $c.clientsPerPooler) (int $c.maxClientConn) }}
{{- $problems = append $problems (printf "client connections: (API pods %d x API_PROCESSES %d + worker pods %d) x APP_POOL_MAX %d = %d over %d PgBouncer instances = %d each, more than max_client_conn %d: raise database.pooler.maxClientConn to at least %d, add database.pooler.instances, or lower appPool.max or the pod maximums" (int $c.apiPods) (int $c.apiProcesses) (int $c.workerPods) (int $c.appPoolMax) (int $c.clients) (int $c.poolerInstances) (int $c.clientsPerPooler) (int $c.maxClientConn) (int $c.clientsPerPooler)) }}
{{- end }}
{{- if gt (int $c.servers) (int $c.usable) }}
{{- $problems = append $problems (printf "server connections: %d PgBouncer instances x %d (default_pool_size %d + reserve_pool_size %d, x %d pools, max_db_connections %d) + other connections %d = %d, more than PostgreSQL's %d usable (max_connections %d - %d reserved): lower database.pooler.defaultPoolSize or reservePoolSize, set maxDbConnections, use fewer pooler instances, or raise database.postgres.maxConnections" (int $c.poolerInstances) (int $c.serversPerPooler) (int $c.defaultPoolSize) (int $c.reservePoolSize) (int $c.pools) (int $c.maxDbConnections) (int $c.otherConnections) (int $c.servers) (int $c.usable) (int $c.maxConnections) (int $c.reservedConnections)) }}
{{- end }}
{{- if $problems }}
{{- fail (printf "the connection arithmetic does not fit (README, \"Scaling past one machine\"): %s" (join "; " $problems)) }}
{{- end }}
{{- end }}

{{/*
Values that JSON Schema cannot relate to each other, checked once, each naming its fix.
*/}}
{{- define "video-tasks.checkValues" -}}
{{- $v := .Values }}
{{- $problems := list }}
{{- if and $v.api.autoscaling.enabled (lt (int $v.api.autoscaling.maxReplicas) (int $v.api.autoscaling.minReplicas)) }}
{{- $problems = append $problems "api.autoscaling.maxReplicas must not be below minReplicas" }}
{{- end }}
{{- if and $v.worker.keda.enabled (lt (int $v.worker.keda.maxReplicaCount) (int $v.worker.keda.minReplicaCount)) }}
{{- $problems = append $problems "worker.keda.maxReplicaCount must not be below minReplicaCount" }}
{{- end }}
{{- if gt (int $v.appPool.min) (int $v.appPool.max) }}
{{- $problems = append $problems "appPool.min must not exceed appPool.max" }}
{{- end }}
{{- if and (gt (int $v.database.pooler.maxDbConnections) 0) (lt (int $v.database.pooler.maxDbConnections) (int $v.database.pooler.defaultPoolSize)) }}
{{- $problems = append $problems "database.pooler.maxDbConnections must be 0 or at least defaultPoolSize" }}
{{- end }}
{{- $metrics := list }}
{{- range $i := until (int $v.api.processes) }}
{{- $metrics = append $metrics (int64 (add $v.api.metricsPort $i)) }}
{{- end }}
{{- if has (int64 $v.api.port) $metrics }}
{{- $problems = append $problems (printf "api.port %d is among the API's metrics ports (api.metricsPort %d + process index)" (int $v.api.port) (int $v.api.metricsPort)) }}
{{- end }}
{{- if $problems }}
{{- fail (printf "invalid values: %s" (join "; " $problems)) }}
{{- end }}
{{- end }}
