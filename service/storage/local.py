"""Objects as files under MEDIA_DIR; the API serves videos/ under /media/videos/.

Workers on several hosts share objects only if MEDIA_DIR is a shared file system;
otherwise use STORAGE_BACKEND=s3.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from service import errors


class LocalStorage:
    name = "local"
    urls_expire = False

    def __init__(self, *, media_dir: Path, public_base_url: str) -> None:
        self.media_dir = media_dir
        self.public_base_url = public_base_url.rstrip("/")

    def path_for(self, key: str) -> Path:
        path = (self.media_dir / key).resolve()
        if not path.is_relative_to(self.media_dir.resolve()):
            raise errors.StorageError(f"object key {key!r} leaves the media directory")
        return path

    async def put(self, key: str, source: Path) -> None:
        try:
            await asyncio.to_thread(_copy_atomic, source, self.path_for(key))
        except OSError as exc:
            raise errors.StorageError(f"could not store {key}: {exc.strerror}") from exc

    async def get(self, key: str, dest: Path) -> None:
        try:
            await asyncio.to_thread(_copy_atomic, self.path_for(key), dest)
        except OSError as exc:
            raise errors.StorageError(f"could not read {key}: {exc.strerror}") from exc

    async def url(self, key: str) -> str:
        return f"{self.public_base_url}/media/{key}"

    async def close(self) -> None:
        return None


def _copy_atomic(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    # Atomic: readers see the old object or the new one, never half of one.
    os.replace(tmp, dest)
