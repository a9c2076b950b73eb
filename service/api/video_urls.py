"""Video URLs that expire (presigned S3 GETs), handed out fresh by the progress route.

A completed task's row keeps the URL signed when it completed; once that may have
expired, the API signs a new one from the row's video_key. Signing is local work (an
HMAC, no request to S3), and each URL is reused until half its lifetime has passed, so
thousands of polls for the same video cost one signature.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from service.storage import ObjectStorage

# Signed URLs kept per API process; the oldest are dropped beyond this.
MAX_CACHED_URLS = 10_000


class FreshUrls:
    def __init__(self, store: ObjectStorage, *, ttl_s: float) -> None:
        self.store = store
        # A URL handed out has at least half the TTL left.
        self.reuse_s = ttl_s / 2
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def url(self, key: str) -> str:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(key)
            return cached[0]
        url = await self.store.url(key)
        self._cache[key] = (url, now + self.reuse_s)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_URLS:
            self._cache.popitem(last=False)
        return url
