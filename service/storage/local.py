"""Videos on the local disk, served by the API under /media/."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

from service import errors


class LocalStorage:
    name = "local"

    def __init__(self, *, media_dir: Path, public_base_url: str) -> None:
        self.videos_dir = media_dir / "videos"
        self.public_base_url = public_base_url.rstrip("/")

    def path_for(self, task_id: uuid.UUID) -> Path:
        return self.videos_dir / f"{task_id}.mp4"

    async def store(self, task_id: uuid.UUID, source: Path) -> str:
        try:
            await asyncio.to_thread(self._copy, source, self.path_for(task_id))
        except OSError as exc:
            raise errors.StorageError(f"could not store the video: {exc.strerror}") from exc
        return f"{self.public_base_url}/media/videos/{task_id}.mp4"

    def _copy(self, source: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, tmp)
        # Atomic: readers see the old video or the new one, never half of one.
        os.replace(tmp, dest)
