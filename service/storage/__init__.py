"""Where finished videos are stored and served from."""

from __future__ import annotations

from service.settings import Settings
from service.storage.base import VideoStorage
from service.storage.local import LocalStorage

__all__ = ["LocalStorage", "VideoStorage", "from_settings"]


def from_settings(settings: Settings) -> VideoStorage:
    return LocalStorage(media_dir=settings.media_dir, public_base_url=settings.public_base_url)
