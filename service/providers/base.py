"""The interface every video provider implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class PartJob:
    """One part of a task's video: which product, which theme, which slice."""

    task_id: str
    product_name: str
    theme: str
    index: int  # 0-based
    count: int
    seconds: int


class VideoProvider(Protocol):
    """Renders parts and merges them. Both write `dest` atomically and may be rerun:
    a reclaimed task renders a part again over a half-written one."""

    name: str

    async def render_part(self, job: PartJob, dest: Path) -> None:
        """Write the clip of one part to dest; raise errors.ProviderError on failure."""

    async def merge(self, parts: list[Path], dest: Path) -> None:
        """Join the parts, in order, into one video at dest."""
