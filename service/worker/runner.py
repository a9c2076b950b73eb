"""The worker: claims tasks from PostgreSQL and makes their videos, never holding a
connection while it works.

One asyncio loop runs up to `worker_concurrency` tasks. Around them, small loops:
- claim: leases pending tasks with one SKIP LOCKED statement when a slot is free;
- heartbeat: extends the leases of all running claims with one statement, and stops the
  runs whose claim is gone;
- rescuer: puts tasks whose lease ran out (a dead or frozen worker) back to pending;
- retention: deletes tasks finished more than RETENTION_DAYS ago, with their parts.

A task's parts are made one after another from the parts ledger (service.parts): a part
already stored is fetched from storage, a part whose remote task was created is polled,
any other is created (intent recorded first). Each database touch is one short statement
guarded by the claim's token; provider calls, ffmpeg and uploads hold no connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import shutil
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from service import errors, parts, storage, tasks
from service.providers import PartJob, VideoProvider
from service.settings import Settings
from service.storage import ObjectStorage
from service.worker.notifier import Notifier

logger = logging.getLogger(__name__)

RESCUE_INTERVAL_S = 5.0
# Retention passes run this often (with jitter), and pause this long between full batches
# so that the worker's own statements get the pool's connections in between.
RETENTION_INTERVAL_S = 60.0
RETENTION_PAUSE_S = 0.1
# While the database is unreachable, a state write is retried this often.
DB_RETRY_DELAY_S = 0.5
RELEASE_TIMEOUT_S = 3.0

TRANSIENT = (errors.ProviderError, errors.StorageError, errors.DatabaseUnavailable, OSError)


def backoff_delay_s(attempt: int, base_s: float) -> float:
    """Exponential backoff with jitter: about base, 2*base, 4*base... (50-100%)."""
    return base_s * 2 ** max(attempt - 1, 0) * random.uniform(0.5, 1.0)


def jittered(interval_s: float) -> float:
    """An idle poll interval, +-20%, so that many workers do not poll in step."""
    return interval_s * random.uniform(0.8, 1.2)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Run:
    """One claim of a task being worked on by this worker."""

    task: tasks.ClaimedTask
    # The run's own scratch directory (WORK_DIR/<task_id>.<claim>), removed when it ends.
    workdir: Path
    runner: asyncio.Task[None] | None = None
    # Set by the heartbeat when the claim no longer owns the task; its cancel then ends
    # the run quietly (someone else owns the task, there is nothing to hand back).
    lost: bool = False


class Worker:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool, provider: VideoProvider,
                 store: ObjectStorage, *, worker_id: str | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        # Sends the outbox's subscribe messages; None without WECHAT_APPID.
        self.notifier = notifier
        self.pool = pool
        self.provider = provider
        self.storage = store
        self.worker_id = worker_id or new_worker_id()
        # By task id: a worker never runs the same task twice at once.
        self.running: dict[uuid.UUID, Run] = {}
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self.completed = 0
        self.failed = 0
        # Parts ledger figures, for metrics.
        self.clip_creates = 0
        self.possible_duplicate_creates = 0
        self.parts_reused = 0
        self.usage_tokens = 0

    # --- loops ------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until stop() is called, then hand unfinished tasks back."""
        logger.info("worker %s: up to %d tasks at once, provider %s, storage %s",
                    self.worker_id, self.settings.worker_concurrency, self.provider.name,
                    self.storage.name)
        helpers = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                   asyncio.create_task(self._rescue_loop(), name="rescuer"),
                   asyncio.create_task(self._retention_loop(), name="retention")]
        notifying = None
        if self.notifier is not None:
            notifying = asyncio.create_task(self.notifier.run(), name="notifier")
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            if notifying is not None and self.notifier is not None:
                # The send in flight is let finish and settle: one cut off is lost.
                self.notifier.stop()
                await asyncio.wait([notifying], timeout=RELEASE_TIMEOUT_S)
                helpers.append(notifying)
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
                                                lease_s=self.settings.lease_s,
                                                running=list(self.running))
                except errors.DatabaseUnavailable as exc:
                    logger.warning("claim failed: %s", exc)
                except Exception:
                    # Never let one odd failure stop the worker: log it, poll again.
                    logger.exception("claim failed")
            for task in claimed:
                logger.info("task %s: claimed (attempt %d, %d/%d parts done)", task.task_id,
                            task.attempts, task.current_part, task.total_parts)
                run = Run(task, workdir=self.settings.work_dir /
                          f"{task.task_id}.{task.claim_token.hex[:8]}")
                run.runner = asyncio.create_task(self._process(run),
                                                 name=f"task-{task.task_id}")
                self.running[task.task_id] = run
                run.runner.add_done_callback(functools.partial(self._finished, task.task_id))
            if claimed and len(claimed) == free:
                continue  # there may be more: claim again as soon as a slot frees
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(),
                                       jittered(self.settings.worker_poll_interval_s))

    def _finished(self, task_id: uuid.UUID, _runner: asyncio.Task[None] | None = None) -> None:
        self.running.pop(task_id, None)
        self._slot_freed.set()
        if self.notifier is not None:
            self.notifier.wake.set()  # a finished task may have left a notice

    async def _drain(self) -> None:
        """Give in-flight stages the grace period, then cancel what is left."""
        runners = [run.runner for run in self.running.values() if run.runner is not None]
        if not runners:
            return
        logger.info("stopping: waiting up to %.0f s for %d tasks to reach a stage boundary",
                    self.settings.shutdown_grace_s, len(runners))
        _, pending = await asyncio.wait(runners, timeout=self.settings.shutdown_grace_s)
        for runner in pending:
            runner.cancel()
        if pending:
            await asyncio.wait(pending, timeout=RELEASE_TIMEOUT_S + 1)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            runs = {run.task.claim_token: run for run in self.running.values()}
            if not runs:
                continue
            try:
                held = await tasks.heartbeat(self.pool, claim_tokens=list(runs),
                                             lease_s=self.settings.lease_s)
            except errors.DatabaseUnavailable as exc:
                logger.warning("heartbeat failed: %s", exc)
                continue
            except Exception:
                logger.exception("heartbeat failed")
                continue
            for token in runs.keys() - held:
                run = runs[token]
                if run.runner is not None and not run.runner.done():
                    logger.warning("task %s: claim lost (lease expired or taken over), "
                                   "stopping this run", run.task.task_id)
                    run.lost = True
                    run.runner.cancel()

    async def _rescue_loop(self) -> None:
        while True:
            try:
                while True:
                    rescued = await tasks.rescue_expired(
                        self.pool, max_attempts=self.settings.max_attempts)
                    for row in rescued:
                        logger.warning("task %s: lease expired, now %s", row["task_id"],
                                       row["status"])
                    if len(rescued) < tasks.RESCUE_BATCH:
                        break
            except errors.DatabaseUnavailable as exc:
                logger.warning("rescue failed: %s", exc)
            except Exception:
                logger.exception("rescue failed")
            await asyncio.sleep(jittered(RESCUE_INTERVAL_S))

    async def _retention_loop(self) -> None:
        """Delete tasks finished more than RETENTION_DAYS ago, and their parts ledger rows
        (ON DELETE CASCADE), one short statement per batch of RETENTION_BATCH.

        Every worker runs it; SKIP LOCKED lets them share a backlog. The objects in
        storage (the videos and the parts) are not deleted here: a bucket lifecycle rule
        or a cron job on MEDIA_DIR expires them (ops/README.md, "Retention").
        """
        days, batch = self.settings.retention_days, self.settings.retention_batch
        if days <= 0:
            return  # RETENTION_DAYS=0: keep finished tasks forever
        while True:
            deleted = 0
            try:
                while True:
                    batch_deleted = await tasks.delete_finished(
                        self.pool, older_than_days=days, limit=batch)
                    deleted += batch_deleted
                    if batch_deleted < batch:
                        break
                    await asyncio.sleep(RETENTION_PAUSE_S)
                while True:
                    if await tasks.delete_idle_requesters(self.pool, limit=batch) < batch:
                        break
                    await asyncio.sleep(RETENTION_PAUSE_S)
            except errors.DatabaseUnavailable as exc:
                logger.warning("retention failed: %s", exc)
            except Exception:
                logger.exception("retention failed")
            if deleted:
                logger.info("retention: deleted %d tasks finished more than %d days ago",
                            deleted, days)
            await asyncio.sleep(jittered(RETENTION_INTERVAL_S))

    # --- one task ---------------------------------------------------------------------

    async def _process(self, run: Run) -> None:
        tid = run.task.task_id
        try:
            await self._produce(run)
        except errors.LeaseLost:
            logger.warning("task %s: claim lost, dropping this run", tid)
        except errors.ShuttingDown:
            await self._hand_back(run)
        except asyncio.CancelledError:
            if run.lost:
                return  # our own cancel: the task belongs to another claim now
            await self._hand_back(run)
            raise
        except errors.ProviderRefused as exc:
            await self._fail_now(run, exc)
        except TRANSIENT as exc:
            await self._after_failure(run, exc)
        except Exception as exc:
            logger.exception("task %s: unexpected error", tid)
            await self._after_failure(run, exc)
        else:
            self.completed += 1
        finally:
            # The run's own scratch files; parts that matter are in storage already.
            shutil.rmtree(run.workdir, ignore_errors=True)

    async def _produce(self, run: Run) -> None:
        s, task = self.settings, run.task
        # Earlier claims of this task on this host are dead (a new claim took over): their
        # scratch files, left by a kill -9, go now.
        for stale in s.work_dir.glob(f"{task.task_id}.*"):
            if stale != run.workdir:
                shutil.rmtree(stale, ignore_errors=True)
        run.workdir.mkdir(parents=True, exist_ok=True)
        ledger = await self._read(parts.list_for, task.task_id)
        lengths = tasks.part_lengths(task.duration, s.part_seconds)
        clips = []
        for index, seconds in enumerate(lengths):
            self._stop_at_stage_boundary()
            job = PartJob(task_id=str(task.task_id), product_name=task.product_name,
                          theme=task.theme, index=index, count=len(lengths), seconds=seconds)
            clip = run.workdir / f"part-{index:03d}.mp4"
            part = ledger.get(index)
            if part is not None and part.state is parts.PartState.STORED:
                assert part.object_key is not None, "a stored part has its object (CHECK)"
                # Finished by an earlier attempt, possibly on another host.
                await self.storage.get(part.object_key, clip)
                self.parts_reused += 1
            else:
                await self._make_part(run, job, part, clip)
            clips.append(clip)
        self._stop_at_stage_boundary()
        await self._record(tasks.set_stage, run, status=tasks.Status.MERGING,
                           lease_s=s.lease_s)
        merged = run.workdir / "video.mp4"
        await self.provider.merge(clips, lengths, merged)
        self._stop_at_stage_boundary()
        await self._record(tasks.set_stage, run, status=tasks.Status.UPLOADING,
                           lease_s=s.lease_s)
        key = storage.video_key(task.task_id)
        await self.storage.put(key, merged)
        await self._record(tasks.complete, run, video_url=await self.storage.url(key),
                           video_key=key)
        logger.info("task %s: completed", task.task_id)

    async def _make_part(self, run: Run, job: PartJob, part: parts.Part | None,
                         clip: Path) -> None:
        """Create (or resume) one part's clip, store it, record it in the ledger."""
        remote_id = part.remote_task_id if part and part.state is parts.PartState.CREATED \
            else None
        if remote_id is None and self.provider.remote:
            intent = await self._record(parts.record_intent, run, part_index=job.index,
                                        provider=self.provider.name)
            if intent.possible_duplicate:
                self.possible_duplicate_creates += 1
                logger.warning("task %s: part %d: an earlier create's answer was never "
                               "recorded; creating again (create %d)", job.task_id,
                               job.index + 1, intent.creates)
            try:
                remote_id = await self.provider.create_clip(job)
            except errors.CreateOutcomeUnknown:
                raise  # the part stays "creating": the provider may have started a task
            except (errors.ProviderError, errors.ProviderRefused) as exc:
                await self._note_part_failed(run, job.index, exc)
                raise
            self.clip_creates += 1
            assert remote_id is not None, "a remote provider returns its task id"
            await self._record(parts.record_created, run, part_index=job.index,
                               remote_task_id=remote_id)
        elif remote_id is None:
            remote_id = await self.provider.create_clip(job)
        try:
            result = await self.provider.fetch_clip(job, remote_id, clip)
        except (errors.RemoteTaskFailed, errors.ProviderRefused) as exc:
            await self._note_part_failed(run, job.index, exc)
            raise
        await self.storage.put(storage.part_key(job.task_id, job.index), clip)
        await self._record(parts.record_stored, run, part_index=job.index,
                           provider=self.provider.name, remote_task_id=remote_id,
                           object_key=storage.part_key(job.task_id, job.index),
                           usage_tokens=result.usage_tokens, parts_done=job.index + 1,
                           progress=tasks.progress_after_parts(job.index + 1, job.count),
                           lease_s=self.settings.lease_s)
        self.usage_tokens += result.usage_tokens or 0

    async def _note_part_failed(self, run: Run, index: int, exc: BaseException) -> None:
        """Best effort: a part whose failure is not recorded is polled again next attempt,
        fails again, and is recorded then."""
        try:
            await self._record(parts.record_failed, run, part_index=index,
                               error_message=_describe_failure(exc))
        except (errors.LeaseLost, errors.DatabaseUnavailable) as record_exc:
            logger.warning("task %s: part %d: could not record its failure (%s)",
                           run.task.task_id, index + 1, type(record_exc).__name__)

    def _stop_at_stage_boundary(self) -> None:
        if self.stopping.is_set():
            raise errors.ShuttingDown()

    async def _read(self, query: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A read the run needs; keep trying while the database is unreachable (the
        lease covers us that long)."""
        deadline = asyncio.get_running_loop().time() + self.settings.lease_s
        while True:
            try:
                return await query(self.pool, *args)
            except errors.DatabaseUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(DB_RETRY_DELAY_S)

    async def _record(self, statement: Callable[..., Awaitable[Any]], run: Run,
                      **params: Any) -> Any:
        """Write a state change as this run's claim; keep trying while the database is
        unreachable.

        Every write is guarded by the claim token and a live lease: a falsy answer means
        the claim no longer owns the task (its lease expired, or the rescuer handed it to
        another claim), and the run stops with LeaseLost.
        """
        deadline = asyncio.get_running_loop().time() + self.settings.lease_s
        while True:
            try:
                result = await statement(self.pool, task_id=run.task.task_id,
                                         claim_token=run.task.claim_token, **params)
            except errors.DatabaseUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(DB_RETRY_DELAY_S)
                continue
            if not result:
                raise errors.LeaseLost(str(run.task.task_id))
            return result

    async def _fail_now(self, run: Run, exc: errors.ProviderRefused) -> None:
        """The provider refused for good (content rejected, bad credentials): no retry."""
        logger.warning("task %s: refused by the provider (%s): failing it", run.task.task_id,
                       exc.code or "no code")
        await self._finish_failed(run, exc.message, tasks.FailureCode.CONTENT_REJECTED
                                  if exc.content_rejected else tasks.FailureCode.GENERATION_FAILED)

    async def _after_failure(self, run: Run, exc: BaseException) -> None:
        task = run.task
        reason = _describe_failure(exc)
        if task.attempts >= self.settings.max_attempts:
            logger.warning("task %s: failed for good: %s", task.task_id, reason)
            await self._finish_failed(run, f"The video could not be generated after "
                                           f"{task.attempts} attempts: {reason}.")
            return
        delay = backoff_delay_s(task.attempts, self.settings.retry_base_delay_s)
        logger.warning("task %s: attempt %d failed (%s), retrying in %.1f s",
                       task.task_id, task.attempts, reason, delay)
        with self._unrecorded(run):
            await self._record(tasks.retry_later, run,
                               error_message=f"Attempt {task.attempts} failed: {reason}; "
                                             "retrying.", delay_s=delay)

    async def _finish_failed(self, run: Run, message: str,
                             code: tasks.FailureCode = tasks.FailureCode.GENERATION_FAILED
                             ) -> None:
        with self._unrecorded(run):
            await self._record(tasks.fail, run, error_message=message, error_code=code)
            self.failed += 1

    @contextlib.contextmanager
    def _unrecorded(self, run: Run) -> Iterator[None]:
        """A failure that cannot be recorded is left to the lease: once it expires, the
        rescuer hands the task on."""
        try:
            yield
        except errors.LeaseLost:
            logger.warning("task %s: claim lost, dropping this run", run.task.task_id)
        except errors.DatabaseUnavailable as exc:
            logger.warning("task %s: could not record the failure: %s", run.task.task_id, exc)

    async def _hand_back(self, run: Run) -> None:
        """On shutdown: back to pending now, rather than after the lease expires."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await tasks.release(self.pool, task_id=run.task.task_id,
                                    claim_token=run.task.claim_token)
            logger.info("task %s: handed back", run.task.task_id)
        except (TimeoutError, errors.DatabaseUnavailable) as exc:
            logger.warning("task %s: hand-back failed (%s); its lease will expire",
                           run.task.task_id, type(exc).__name__)


def _describe_failure(exc: BaseException) -> str:
    """A sentence a person can read; no tracebacks or internals."""
    if isinstance(exc, errors.ProviderRefused):
        return exc.message
    if isinstance(exc, errors.ProviderError):
        return f"the video provider failed ({exc})"
    if isinstance(exc, errors.StorageError):
        return f"storing the video failed ({exc})"
    if isinstance(exc, errors.DatabaseUnavailable):
        return "the database was unreachable"
    if isinstance(exc, OSError):
        return f"a file operation failed ({exc.strerror or type(exc).__name__})"
    return f"an internal error occurred ({type(exc).__name__})"
