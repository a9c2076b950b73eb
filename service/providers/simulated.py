"""A provider that only waits: benchmarks and fault tests measure the service, not ffmpeg.

Each part takes `part_s` seconds of waiting (as an external AI API would) and writes a
small marker file; the merged "video" is the parts' bytes joined, not a playable file.

Test and benchmark knobs (settings SIMULATED_*; never used by the other providers):
- `fail_first=N`: the first N part renders of every task raise errors.ProviderError.
  The count lives in a file under WORK_DIR, so it holds across retries and across worker
  processes of one host.
- `fail_always`: every part render raises errors.ProviderError.
- `render_log`: a file that gets one line per rendered part,
  "<task_id> <part> <pid> <started> <ended>" (Unix times), so a test can count how often
  each part was rendered, by which process, and whether two renders of a task overlapped.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from service import errors
from service.providers.base import ClipResult, PartJob
from service.settings import Settings

FAILURES_DIR = ".simulated-failures"


class SimulatedProvider:
    name = "simulated"
    remote = False

    def __init__(self, part_s: float, *, state_dir: Path, fail_first: int = 0,
                 fail_always: bool = False, render_log: Path | None = None) -> None:
        self.part_s = part_s
        self.state_dir = state_dir
        self.fail_first = fail_first
        self.fail_always = fail_always
        self.render_log = render_log

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedProvider:
        return cls(part_s=settings.simulated_part_s,
                   state_dir=settings.work_dir / FAILURES_DIR,
                   fail_first=settings.simulated_fail_first,
                   fail_always=settings.simulated_fail_always,
                   render_log=Path(settings.simulated_render_log)
                   if settings.simulated_render_log else None)

    async def create_clip(self, job: PartJob) -> str | None:
        return None

    async def fetch_clip(self, job: PartJob, remote_id: str | None, dest: Path) -> ClipResult:
        started = time.time()
        await asyncio.sleep(self.part_s)
        self._maybe_fail(job.task_id)
        _write_atomic(dest, f"simulated part {job.index + 1}/{job.count} of {job.task_id}\n"
                      .encode())
        if self.render_log is not None:
            # One short O_APPEND write per line: lines of concurrent workers never mix.
            with self.render_log.open("a", encoding="utf-8") as log:
                log.write(f"{job.task_id} {job.index} {os.getpid()} {started:.3f} "
                          f"{time.time():.3f}\n")
        return ClipResult()

    async def merge(self, parts: list[Path], lengths_s: list[int], dest: Path) -> None:
        _write_atomic(dest, b"".join(part.read_bytes() for part in parts))

    async def close(self) -> None:
        return None

    def _maybe_fail(self, task_id: str) -> None:
        if self.fail_always:
            raise errors.ProviderError("simulated failure: SIMULATED_FAIL_ALWAYS is set")
        if self.fail_first <= 0:
            return
        counter = self.state_dir / task_id
        try:
            failed = int(counter.read_text())
        except (OSError, ValueError):
            failed = 0
        if failed < self.fail_first:
            counter.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(counter, str(failed + 1).encode())
            raise errors.ProviderError(f"simulated failure {failed + 1} of "
                                       f"{self.fail_first} (SIMULATED_FAIL_FIRST)")


def _write_atomic(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
