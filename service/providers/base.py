"""The interface every video provider implements.

A part's clip is made in two steps so that the worker can record each in the parts
ledger (service.parts) before the next: `create_clip` starts it (for Ark: one billed
remote task, whose id the worker stores at once), `fetch_clip` waits for it and writes
the clip to a local file. A task resumed on another worker calls `fetch_clip` with the
stored remote id and never creates that part again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class PartRole(StrEnum):
    """What a part says in the ad: the video opens, sells, then closes."""

    OPENING = "opening"
    SELLING_POINT = "selling_point"
    CLOSING = "closing"
    # A one-part video says it all at once.
    WHOLE = "whole"


@dataclass(frozen=True)
class PartJob:
    """One part of a task's video: which product, which theme, which slice."""

    task_id: str
    product_name: str
    theme: str
    index: int  # 0-based
    count: int
    seconds: int

    @property
    def role(self) -> PartRole:
        if self.count == 1:
            return PartRole.WHOLE
        if self.index == 0:
            return PartRole.OPENING
        if self.index == self.count - 1:
            return PartRole.CLOSING
        return PartRole.SELLING_POINT


@dataclass(frozen=True)
class ClipResult:
    """What making a clip cost: Ark's usage.completion_tokens, None when free (local)."""

    usage_tokens: int | None = None


class VideoProvider(Protocol):
    name: str
    # True when create_clip starts a billed task elsewhere: the worker records its intent
    # and id in the parts ledger around the call. False for local renderers.
    remote: bool

    async def create_clip(self, job: PartJob) -> str | None:
        """Start making the part's clip; return the provider's task id, or None when the
        clip is made by fetch_clip itself (local renderers).

        Never retried after a lost answer: a second call may start a second billed task.
        Raises errors.ProviderError (try again later) or errors.ProviderRefused (never).
        """

    async def fetch_clip(self, job: PartJob, remote_id: str | None, dest: Path) -> ClipResult:
        """Wait for the clip and write it to dest atomically (rerun-safe).

        Raises errors.RemoteTaskFailed when remote_id can give no clip (create anew),
        errors.ProviderError for a transient failure (poll the same id again later),
        errors.ProviderRefused when the provider rejects the content or the credentials.
        """

    async def merge(self, parts: list[Path], lengths_s: list[int], dest: Path) -> None:
        """Join the clips, in order and each cut to its length, into one video at dest."""

    async def close(self) -> None:
        """Release HTTP sessions and the like."""
