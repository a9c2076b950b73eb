"""The interface every storage backend implements."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Protocol


class VideoStorage(Protocol):
    name: str

    async def store(self, task_id: uuid.UUID, source: Path) -> str:
        """Store the task's video and return its public URL.

        Idempotent: storing again for the same task overwrites the same object, so a
        rerun never leaves two videos for one task. Raise errors.StorageError on failure.
        """
