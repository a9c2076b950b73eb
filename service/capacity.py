"""Connection arithmetic: what must fit where, the one rule the doctor and the chart share.

Two bounds, each on a different side of PgBouncer:

- Client connections. Every API process and every worker opens a pool of up to
  APP_POOL_MAX client connections to PgBouncer:

      clients = (API pods x API_PROCESSES + worker pods) x APP_POOL_MAX

  With several PgBouncer instances behind one Service, the Service spreads the clients
  over them and each instance accepts at most its own max_client_conn:

      ceil(clients / pooler instances) <= max_client_conn

- Server connections. Each PgBouncer instance has pools of its own (one per database and
  user), so they add up at PostgreSQL:

      pooler instances x (default_pool_size + reserve_pool_size) x pools
          (each instance's share capped by max_db_connections when that is set)
      + other connections (migrations, the doctor, KEDA, psql: straight to PostgreSQL)
      <= max_connections - superuser_reserved_connections - reserved_connections

Pods are counted at their most: an autoscaler's maximum plus the rolling update's
maxSurge, as both old and new pods hold pools while a rollout runs. On one machine the
same rule holds with one API "pod", one PgBouncer and DOCTOR_EXPECTED_WORKERS workers.

The doctor (service/doctor/checks/configuration.py) applies it to the running stack;
the Helm chart applies the same rule in its template (`fail` in
ops/helm/video-tasks/templates/_capacity.tpl) and tests/test_helm_chart.py checks that
both agree on a grid of values.
"""

from __future__ import annotations

from dataclasses import dataclass


def client_connections(*, api_pods: int, api_processes: int, worker_pods: int,
                       app_pool_max: int) -> int:
    """Client connections to PgBouncer at most: every process's pool full."""
    return (api_pods * api_processes + worker_pods) * app_pool_max


def clients_per_pooler(clients: int, pooler_instances: int) -> int:
    """The share of `clients` one of `pooler_instances` PgBouncers takes, rounded up."""
    return -(-clients // max(pooler_instances, 1))


def pooler_server_connections(*, default_pool_size: int, reserve_pool_size: int = 0,
                              pools: int = 1, max_db_connections: int = 0) -> int:
    """Server connections one PgBouncer may open: its pools full, reserve included,
    capped by max_db_connections (0: no cap)."""
    most = (default_pool_size + reserve_pool_size) * pools
    return min(most, max_db_connections) if max_db_connections > 0 else most


def usable_connections(max_connections: int, reserved: int) -> int:
    """PostgreSQL connections ordinary roles may use: max_connections less the slots
    reserved for superusers (superuser_reserved_connections + reserved_connections)."""
    return max_connections - reserved


@dataclass(frozen=True)
class Plan:
    """A deployment's numbers, as the chart's values give them; `problems()` is empty
    when the arithmetic fits."""

    api_pods: int
    api_processes: int
    worker_pods: int
    app_pool_max: int
    pooler_instances: int
    max_client_conn: int
    default_pool_size: int
    reserve_pool_size: int
    max_db_connections: int
    max_connections: int
    # superuser_reserved_connections + reserved_connections
    reserved_connections: int
    # Sessions that go straight to PostgreSQL, past PgBouncer.
    other_connections: int
    # Pools per PgBouncer: one per database and user (the app's role, one database).
    pools: int = 1

    @property
    def clients(self) -> int:
        return client_connections(api_pods=self.api_pods, api_processes=self.api_processes,
                                  worker_pods=self.worker_pods,
                                  app_pool_max=self.app_pool_max)

    @property
    def clients_per_pooler(self) -> int:
        return clients_per_pooler(self.clients, self.pooler_instances)

    @property
    def servers_per_pooler(self) -> int:
        return pooler_server_connections(
            default_pool_size=self.default_pool_size, reserve_pool_size=self.reserve_pool_size,
            pools=self.pools, max_db_connections=self.max_db_connections)

    @property
    def servers(self) -> int:
        """Server connections at PostgreSQL: every PgBouncer's pools plus the others."""
        return self.pooler_instances * self.servers_per_pooler + self.other_connections

    @property
    def usable(self) -> int:
        return usable_connections(self.max_connections, self.reserved_connections)

    def client_arithmetic(self) -> str:
        return (f"(API pods {self.api_pods} x API_PROCESSES {self.api_processes} + worker pods "
                f"{self.worker_pods}) x APP_POOL_MAX {self.app_pool_max} = {self.clients} over "
                f"{self.pooler_instances} PgBouncer instances = {self.clients_per_pooler} each")

    def server_arithmetic(self) -> str:
        return (f"{self.pooler_instances} PgBouncer instances x {self.servers_per_pooler} "
                f"(default_pool_size {self.default_pool_size} + reserve_pool_size "
                f"{self.reserve_pool_size}, x {self.pools} pools, max_db_connections "
                f"{self.max_db_connections}) + other connections {self.other_connections} = "
                f"{self.servers}")

    def client_problem(self) -> str:
        """Empty when each PgBouncer's share of the clients fits its max_client_conn."""
        if self.clients_per_pooler <= self.max_client_conn:
            return ""
        return (f"client connections: {self.client_arithmetic()}, more than max_client_conn "
                f"{self.max_client_conn}: raise max_client_conn to at least "
                f"{self.clients_per_pooler}, add PgBouncer instances, or lower APP_POOL_MAX "
                "or the pod maximums")

    def server_problem(self) -> str:
        """Empty when every PgBouncer's server connections and the others fit PostgreSQL."""
        if self.servers <= self.usable:
            return ""
        return (f"server connections: {self.server_arithmetic()}, more than PostgreSQL's "
                f"{self.usable} usable (max_connections {self.max_connections} - "
                f"{self.reserved_connections} reserved): lower default_pool_size or "
                "reserve_pool_size, set max_db_connections, use fewer PgBouncer instances, "
                "or raise max_connections")

    def problems(self) -> list[str]:
        return [p for p in (self.client_problem(), self.server_problem()) if p]
