"""The interface every storage backend implements: named objects and their URLs.

Keys are the same on every rerun (service.storage.part_key / video_key), so storing again
overwrites the object of an earlier attempt instead of leaving a second one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ObjectStorage(Protocol):
    name: str
    # True when url() gives a URL that expires (presigned): the API signs a fresh one.
    urls_expire: bool

    async def put(self, key: str, source: Path) -> None:
        """Store the file under key, replacing any earlier object; errors.StorageError."""

    async def get(self, key: str, dest: Path) -> None:
        """Write the object to dest atomically; errors.StorageError if it is missing."""

    async def url(self, key: str) -> str:
        """The URL the mini-program downloads the object from."""

    async def close(self) -> None:
        """Release clients and connections."""
