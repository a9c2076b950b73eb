"""The worker: claims tasks from PostgreSQL and renders them, never holding a connection
while it works.

One asyncio loop runs up to `worker_concurrency` tasks. Around them, small loops:
- claim: leases pending tasks with one SKIP LOCKED statement when a slot is free;
- heartbeat: extends the leases of all running tasks with one statement;
- rescuer: puts tasks whose lease ran out (a dead or frozen worker) back to pending.
Each database touch is one short statement; rendering, merging and storing happen with
no connection checked out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from service import errors, tasks
from service.providers import PartJob, VideoProvider
from service.settings import Settings
from service.storage import VideoStorage

logger = logging.getLogger(__name__)

RESCUE_INTERVAL_S = 5.0
# While the database is unreachable, a state write is retried this often.
DB_RETRY_DELAY_S = 0.5
RELEASE_TIMEOUT_S = 3.0

TRANSIENT = (errors.ProviderError, errors.StorageError, errors.DatabaseUnavailable, OSError)


def backoff_delay_s(attempt: int, base_s: float) -> float:
    """Exponential backoff with jitter: about base, 2*base, 4*base... (50-100%)."""
    return base_s * 2 ** max(attempt - 1, 0) * random.uniform(0.5, 1.0)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool, provider: VideoProvider,
                 storage: VideoStorage, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.provider = provider
        self.storage = storage
        self.worker_id = worker_id or new_worker_id()
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self.completed = 0
        self.failed = 0

    # --- loops ------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until stop() is called, then hand unfinished tasks back."""
        logger.info("worker %s: up to %d tasks at once, provider %s", self.worker_id,
                    self.settings.worker_concurrency, self.provider.name)
        helpers = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                   asyncio.create_task(self._rescue_loop(), name="rescuer")]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        logger.info("worker %s stopped", self.worker_id)

    def stop(self) -> None:
        """Stop claiming; running tasks finish their current stage, then go back."""
        self.stopping.set()
        self._slot_freed.set()

    async def _claim_loop(self) -> None:
        while not self.stopping.is_set():
            free = self.settings.worker_concurrency - len(self.running)
            claimed: list[tasks.ClaimedTask] = []
            if free > 0:
                try:
                    claimed = await tasks.claim(self.pool, worker_id=self.worker_id, limit=free,
                                                lease_s=self.settings.lease_s)
                except errors.DatabaseUnavailable as exc:
                    logger.warning("claim failed: %s", exc)
                except Exception:
                    # Never let one odd failure stop the worker: log it, poll again.
                    logger.exception("claim failed")
            for task in claimed:
                logger.info("task %s: claimed (attempt %d, %d/%d parts done)", task.task_id,
                            task.attempts, task.current_part, task.total_parts)
                runner = asyncio.create_task(self._process(task), name=f"task-{task.task_id}")
                self.running[task.task_id] = runner
                runner.add_done_callback(lambda _, tid=task.task_id: self._finished(tid))
            if claimed and len(claimed) == free:
                continue  # there may be more: claim again as soon as a slot frees
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(),
                                       self.settings.worker_poll_interval_s)

    def _finished(self, task_id: uuid.UUID) -> None:
        self.running.pop(task_id, None)
        self._slot_freed.set()

    async def _drain(self) -> None:
        """Give in-flight stages the grace period, then cancel what is left."""
        if not self.running:
            return
        logger.info("stopping: waiting up to %.0f s for %d tasks to reach a stage boundary",
                    self.settings.shutdown_grace_s, len(self.running))
        _, pending = await asyncio.wait(list(self.running.values()),
                                        timeout=self.settings.shutdown_grace_s)
        for runner in pending:
            runner.cancel()
        if pending:
            await asyncio.wait(pending, timeout=RELEASE_TIMEOUT_S + 1)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            held = list(self.running)
            if not held:
                continue
            try:
                still_held = await tasks.heartbeat(self.pool, worker_id=self.worker_id,
                                                   task_ids=held, lease_s=self.settings.lease_s)
            except errors.DatabaseUnavailable as exc:
                logger.warning("heartbeat failed: %s", exc)
                continue
            except Exception:
                logger.exception("heartbeat failed")
                continue
            for task_id in set(held) - still_held:
                runner = self.running.get(task_id)
                if runner is not None and not runner.done():
                    logger.warning("task %s: lease lost, another worker owns it", task_id)
                    runner.cancel(msg="lease lost")

    async def _rescue_loop(self) -> None:
        while True:
            try:
                for row in await tasks.rescue_expired(self.pool,
                                                      max_attempts=self.settings.max_attempts):
                    logger.warning("task %s: lease expired, now %s", row["task_id"],
                                   row["status"])
            except errors.DatabaseUnavailable as exc:
                logger.warning("rescue failed: %s", exc)
            except Exception:
                logger.exception("rescue failed")
            await asyncio.sleep(RESCUE_INTERVAL_S)

    # --- one task ---------------------------------------------------------------------

    async def _process(self, task: tasks.ClaimedTask) -> None:
        workdir = self.settings.work_dir / str(task.task_id)
        try:
            await self._produce(task, workdir)
        except errors.LeaseLost:
            logger.warning("task %s: lease lost, dropping it", task.task_id)
        except asyncio.CancelledError as exc:
            if exc.args and exc.args[0] == "lease lost":
                return
            await self._hand_back(task)
            raise
        except TRANSIENT as exc:
            await self._after_failure(task, exc)
        except Exception as exc:
            logger.exception("task %s: unexpected error", task.task_id)
            await self._after_failure(task, exc)
        else:
            self.completed += 1
            shutil.rmtree(workdir, ignore_errors=True)

    async def _produce(self, task: tasks.ClaimedTask, workdir: Path) -> None:
        s, tid = self.settings, task.task_id
        workdir.mkdir(parents=True, exist_ok=True)
        lengths = tasks.part_lengths(task.duration, s.part_seconds)
        parts = [workdir / f"part-{i:03d}.mp4" for i in range(task.total_parts)]
        for index, path in enumerate(parts):
            if index < task.current_part and path.exists():
                continue  # finished by an earlier attempt: resume after it
            self._stop_at_stage_boundary()
            job = PartJob(task_id=str(tid), product_name=task.product_name, theme=task.theme,
                          index=index, count=task.total_parts, seconds=lengths[index])
            await self.provider.render_part(job, path)
            if index >= task.current_part:
                await self._record(tasks.finish_part, task_id=tid, part=index + 1,
                                   total_parts=task.total_parts, lease_s=s.lease_s)
        self._stop_at_stage_boundary()
        await self._record(tasks.set_stage, task_id=tid, status=tasks.Status.MERGING,
                           lease_s=s.lease_s)
        merged = workdir / "video.mp4"
        await self.provider.merge(parts, merged)
        self._stop_at_stage_boundary()
        await self._record(tasks.set_stage, task_id=tid, status=tasks.Status.UPLOADING,
                           lease_s=s.lease_s)
        video_url = await self.storage.store(tid, merged)
        await self._record(tasks.complete, task_id=tid, video_url=video_url)
        logger.info("task %s: completed", tid)

    def _stop_at_stage_boundary(self) -> None:
        if self.stopping.is_set():
            raise asyncio.CancelledError("shutdown")

    async def _record(self, statement: Callable[..., Awaitable[bool]], **params) -> None:
        """Write a state change; keep trying while the database is unreachable.

        The write is guarded by this worker's lease: False means another worker owns the
        task now. If the database stays away longer than the lease, the rescuer hands the
        task to another worker and this write comes back False.
        """
        deadline = asyncio.get_running_loop().time() + self.settings.lease_s
        while True:
            try:
                held = await statement(self.pool, worker_id=self.worker_id, **params)
            except errors.DatabaseUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(DB_RETRY_DELAY_S)
                continue
            if not held:
                raise errors.LeaseLost(str(params.get("task_id")))
            return

    async def _after_failure(self, task: tasks.ClaimedTask, exc: BaseException) -> None:
        reason = _describe_failure(exc)
        final = task.attempts >= self.settings.max_attempts
        try:
            if final:
                logger.warning("task %s: failed for good: %s", task.task_id, reason)
                await self._record(tasks.fail, task_id=task.task_id, error_message=(
                    f"The video could not be generated after {task.attempts} attempts: "
                    f"{reason}."))
            else:
                delay = backoff_delay_s(task.attempts, self.settings.retry_base_delay_s)
                logger.warning("task %s: attempt %d failed (%s), retrying in %.1f s",
                               task.task_id, task.attempts, reason, delay)
                await self._record(tasks.retry_later, task_id=task.task_id,
                                   error_message=f"Attempt {task.attempts} failed: {reason}; "
                                                 "retrying.", delay_s=delay)
        except errors.LeaseLost:
            # Another worker owns the task now: its work directory is not ours to remove.
            logger.warning("task %s: lease lost, dropping it", task.task_id)
            return
        except errors.DatabaseUnavailable as record_exc:
            # The lease covers it: once it expires, the rescuer hands the task on.
            logger.warning("task %s: could not record the failure: %s", task.task_id,
                           record_exc)
            return
        if final:
            self.failed += 1
            shutil.rmtree(self.settings.work_dir / str(task.task_id), ignore_errors=True)

    async def _hand_back(self, task: tasks.ClaimedTask) -> None:
        """On shutdown: back to pending now, rather than after the lease expires."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await tasks.release(self.pool, task_id=task.task_id, worker_id=self.worker_id)
            logger.info("task %s: handed back", task.task_id)
        except (TimeoutError, errors.DatabaseUnavailable) as exc:
            logger.warning("task %s: hand-back failed (%s); its lease will expire",
                           task.task_id, type(exc).__name__)


def _describe_failure(exc: BaseException) -> str:
    """A sentence a person can read; no tracebacks or internals."""
    if isinstance(exc, errors.ProviderError):
        return f"the video provider failed ({exc})"
    if isinstance(exc, errors.StorageError):
        return f"storing the video failed ({exc})"
    if isinstance(exc, errors.DatabaseUnavailable):
        return "the database was unreachable"
    if isinstance(exc, OSError):
        return f"a file operation failed ({exc.strerror or type(exc).__name__})"
    return f"an internal error occurred ({type(exc).__name__})"
