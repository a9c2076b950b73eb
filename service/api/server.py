"""Running the API: one process, or several sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal

from aiohttp import web

from service.api.app import create_app
from service.settings import Settings

logger = logging.getLogger(__name__)
# In-flight requests get this long to finish after SIGTERM.
SHUTDOWN_TIMEOUT_S = 10.0


def serve(settings: Settings) -> None:
    if settings.api_processes == 1:
        _serve_one(settings)
        return
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_serve_one, args=(_process_settings(settings, i),),
                                name=f"api-{i}")
                for i in range(settings.api_processes)]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.is_alive() and child.pid:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


def _process_settings(settings: Settings, index: int) -> Settings:
    """Each process serves its own /metrics: process i on METRICS_PORT + i (0 stays off)."""
    if not settings.metrics_port:
        return settings
    return settings.replace(metrics_port=settings.metrics_port + index)


def _serve_one(settings: Settings) -> None:
    # aiohttp handles SIGTERM/SIGINT: stop accepting, drain in-flight requests, close pool.
    web.run_app(create_app(settings), host=settings.api_host, port=settings.api_port,
                reuse_port=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None,
                print=lambda *_: None)
