"""A provider that only waits: benchmarks measure the service, not ffmpeg.

Each part takes `part_s` seconds of waiting (as an external AI API would) and writes a
small marker file; the merged "video" is the parts' bytes joined, not a playable file.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from service.providers.base import PartJob


class SimulatedProvider:
    name = "simulated"

    def __init__(self, part_s: float) -> None:
        self.part_s = part_s

    async def render_part(self, job: PartJob, dest: Path) -> None:
        await asyncio.sleep(self.part_s)
        _write_atomic(dest, f"simulated part {job.index + 1}/{job.count} of {job.task_id}\n"
                      .encode())

    async def merge(self, parts: list[Path], dest: Path) -> None:
        _write_atomic(dest, b"".join(part.read_bytes() for part in parts))


def _write_atomic(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
