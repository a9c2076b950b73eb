"""Where parts and finished videos are stored, and the URLs they are served from."""

from __future__ import annotations

import uuid

from service.settings import Settings
from service.storage.base import ObjectStorage
from service.storage.local import LocalStorage

__all__ = ["VIDEOS_DIR", "LocalStorage", "ObjectStorage", "from_settings", "part_key",
           "video_key"]

# Finished videos live under this key prefix (served under /media/videos/ when local).
VIDEOS_DIR = "videos"


def part_key(task_id: uuid.UUID | str, index: int) -> str:
    """The object of one part's clip (0-based index)."""
    return f"parts/{task_id}/part-{index:03d}.mp4"


def video_key(task_id: uuid.UUID | str) -> str:
    """The object of the finished video."""
    return f"{VIDEOS_DIR}/{task_id}.mp4"


def from_settings(settings: Settings) -> ObjectStorage:
    if settings.storage_backend == "s3":
        from service.storage.s3 import S3Storage
        return S3Storage.from_settings(settings)
    return LocalStorage(media_dir=settings.media_dir, public_base_url=settings.public_base_url)
