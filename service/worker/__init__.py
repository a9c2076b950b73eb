"""The worker process: `python -m service worker`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from service import db, metrics, providers, storage, wechat
from service.settings import Settings
from service.worker.notifier import Notifier
from service.worker.runner import Worker

logger = logging.getLogger(__name__)
POOL_OPEN_TIMEOUT_S = 30.0


async def serve(settings: Settings) -> None:
    """Run a worker until SIGTERM/SIGINT; a second signal exits at once."""
    provider = providers.from_settings(settings)
    store = storage.from_settings(settings)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    pool = db.create_pool(settings, name="video-tasks-worker")
    await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
    client = None
    notifier = None
    if settings.wechat_appid:
        client = wechat.WeChat(settings.wechat_api_base, settings.wechat_appid,
                               settings.wechat_secret, timeout_s=settings.wechat_timeout_s)
        notifier = Notifier(settings, pool, client)
    worker = Worker(settings, pool, provider, store, notifier=notifier)
    worker_metrics = metrics.ServiceMetrics("worker")
    worker_metrics.pool = pool
    worker_metrics.extra.append(metrics.worker_collector(worker))
    metrics_runner = await metrics.serve(worker_metrics, settings.metrics_host,
                                         settings.worker_metrics_port)
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if worker.stopping.is_set():
            logger.warning("second %s: exiting now; leases cover the unfinished tasks",
                           signal.Signals(signum).name)
            os._exit(1)
        logger.info("%s: stopping after the current stages (grace %.0f s)",
                    signal.Signals(signum).name, settings.shutdown_grace_s)
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker.run()
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await provider.close()
        await store.close()
        if client is not None:
            await client.close()
        await pool.close()
