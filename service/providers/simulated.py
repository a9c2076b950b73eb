"""A provider that only waits: benchmarks measure the service, not ffmpeg.

Each part takes `part_s` seconds of waiting (as an external AI API would) and writes a
small marker file; the merged "video" is the parts' bytes joined, not a playable file.

Test and benchmark knobs (settings SIMULATED_*; never used by the ffmpeg provider):
- `fail_first=N`: the first N part renders of every task raise errors.ProviderError.
  The count lives in a file in the task's work directory, so it holds across retries
  and across worker processes of one host.
- `fail_always`: every part render raises errors.ProviderError.
- `render_log`: a file that gets one line per rendered part, "<task_id> <part> <pid>",
  so a test can count how often each part was rendered and by which process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from service import errors
from service.providers.base import PartJob
from service.settings import Settings

FAILURES_FILE = ".simulated-failures"


class SimulatedProvider:
    name = "simulated"

    def __init__(self, part_s: float, *, fail_first: int = 0, fail_always: bool = False,
                 render_log: Path | None = None) -> None:
        self.part_s = part_s
        self.fail_first = fail_first
        self.fail_always = fail_always
        self.render_log = render_log

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedProvider:
        return cls(part_s=settings.simulated_part_s,
                   fail_first=settings.simulated_fail_first,
                   fail_always=settings.simulated_fail_always,
                   render_log=Path(settings.simulated_render_log)
                   if settings.simulated_render_log else None)

    async def render_part(self, job: PartJob, dest: Path) -> None:
        await asyncio.sleep(self.part_s)
        self._maybe_fail(dest.parent)
        _write_atomic(dest, f"simulated part {job.index + 1}/{job.count} of {job.task_id}\n"
                      .encode())
        if self.render_log is not None:
            # One short O_APPEND write per line: lines of concurrent workers never mix.
            with self.render_log.open("a", encoding="utf-8") as log:
                log.write(f"{job.task_id} {job.index} {os.getpid()}\n")

    async def merge(self, parts: list[Path], dest: Path) -> None:
        _write_atomic(dest, b"".join(part.read_bytes() for part in parts))

    def _maybe_fail(self, task_dir: Path) -> None:
        if self.fail_always:
            raise errors.ProviderError("simulated failure: SIMULATED_FAIL_ALWAYS is set")
        if self.fail_first <= 0:
            return
        counter = task_dir / FAILURES_FILE
        try:
            failed = int(counter.read_text())
        except (OSError, ValueError):
            failed = 0
        if failed < self.fail_first:
            _write_atomic(counter, str(failed + 1).encode())
            raise errors.ProviderError(f"simulated failure {failed + 1} of "
                                       f"{self.fail_first} (SIMULATED_FAIL_FIRST)")


def _write_atomic(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
