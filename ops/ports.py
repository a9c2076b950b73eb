"""Ports: every listener the stack will open, checked before anything starts.

The API's port and the metrics ports are shared through SO_REUSEPORT (a rolling restart
starts the new process before the old one leaves), so the kernel would let a second
process of ours bind a port that is already served: a worker and an API on the same
metrics port would both listen, and scrapes would alternate between them. Hence the
check here does not rely on bind failing: a port is taken if anything accepts
connections on it or it cannot be bound without SO_REUSEPORT. And two settings that name
the same port are refused before any port is looked at.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from service.settings import Settings

# How far above a taken port a free one is looked for in the message.
SUGGEST_RANGE = 100


@dataclass(frozen=True)
class Listener:
    """A port one part of the stack will listen on, and the setting that names it.

    `offset` is the port's distance from the setting's value (API process i serves its
    metrics on METRICS_PORT + i); `block` is how many consecutive ports the setting takes.
    """

    port: int
    host: str
    what: str
    setting: str
    offset: int = 0
    block: int = 1

    @property
    def named(self) -> str:
        return self.setting + (f" + {self.offset}" if self.offset else "")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts connections on host:port (a wildcard host: on loopback)."""
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        try:
            return sock.connect_ex((target, port)) == 0
        except OSError:
            return False


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """host:port can be bound without SO_REUSEPORT (so no listener holds it, ours included)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Connections in TIME_WAIT do not stop a listener; only SO_REUSEPORT is left out.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def taken(port: int, host: str = "127.0.0.1") -> bool:
    return port_open(port, host) or not bindable(port, host)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (API i serves metrics on base + i)."""
    for _ in range(200):
        base = free_port()
        if base + count <= 65535 and all(bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def app_listeners(settings: Settings, *, api: bool = True,
                  worker: bool = True) -> list[Listener]:
    """The API's port, each API process's metrics port and the worker's metrics port."""
    s = settings
    found = []
    if api:
        found.append(Listener(s.api_port, s.api_host, "the API", "API_PORT"))
        if s.metrics_port:
            for i in range(s.api_processes):
                what = ("the API's metrics" if s.api_processes == 1 else
                        f"the metrics of API process {i + 1} of {s.api_processes}")
                found.append(Listener(s.metrics_port + i, s.metrics_host, what,
                                      "METRICS_PORT", offset=i, block=s.api_processes))
    if worker and s.worker_metrics_port:
        found.append(Listener(s.worker_metrics_port, s.metrics_host, "the worker's metrics",
                              "WORKER_METRICS_PORT"))
    return found


def stack_listeners(settings: Settings, *, postgres: bool = True, pgbouncer: bool = True,
                    api: bool = True, worker: bool = True) -> list[Listener]:
    """Every listener of the local stack (PostgreSQL and PgBouncer on loopback)."""
    found = []
    if postgres:
        found.append(Listener(settings.postgres_port, "127.0.0.1", "PostgreSQL",
                              "POSTGRES_PORT"))
    if pgbouncer:
        found.append(Listener(settings.pgbouncer_port, "127.0.0.1", "PgBouncer",
                              "PGBOUNCER_PORT"))
    return found + app_listeners(settings, api=api, worker=worker)


def conflicts(listeners: list[Listener], *, command: str = "make up") -> list[str]:
    """Two settings that name the same port: one message each, with a port to move to."""
    problems = []
    seen: dict[int, Listener] = {}
    for listener in listeners:
        first = seen.setdefault(listener.port, listener)
        if first is not listener:
            problems.append(
                f"port {listener.port} is wanted twice: by {first.what} ({first.named}) and "
                f"by {listener.what} ({listener.named}). Choose another port: "
                f"{_advice(listener, listeners, command=command)}")
    return problems


def check_free(listeners: list[Listener], *, all_listeners: list[Listener] | None = None,
               command: str = "make up") -> list[str]:
    """Messages for the listeners whose port is in use (by anyone: see the module doc).

    `all_listeners` are every port the stack will use, running parts included, so that
    the port suggested is not one of them either.
    """
    planned = all_listeners or listeners
    return [f"port {listener.port} wanted by {listener.what} is already in use by another "
            f"program (the OS package's own service, or another checkout's stack?). "
            f"Choose another port: {_advice(listener, planned, command=command)}"
            for listener in listeners if taken(listener.port, listener.host)]


def _advice(listener: Listener, planned: list[Listener], *, command: str = "make up") -> str:
    base = listener.port - listener.offset
    others = {other.port for other in planned if other.setting != listener.setting}
    value = base + listener.block
    for candidate in range(base + 1, base + SUGGEST_RANGE):
        block = range(candidate, candidate + listener.block)
        if candidate + listener.block <= 65536 and not others.intersection(block) and all(
                not taken(port, listener.host) for port in block):
            value = candidate
            break
    return (f"{listener.setting}={value} {command}  "
            f"(or put {listener.setting} in .env)")
