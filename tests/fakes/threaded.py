"""Serving an asyncio fake from sync code: its own event loop in a daemon thread.

Session fixtures and worker-subprocess tests are sync; the fakes are aiohttp apps. A fake
is anything with `async start()` and `async stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


FakeT = TypeVar("FakeT", bound=Startable)


class ServedInThread(Generic[FakeT]):
    """`with ServedInThread(fake) as fake:` starts the fake on a loop of its own in a daemon
    thread and stops it at the end. Its plain attributes may be set from the calling
    thread; `call(fn, ...)` and `run(coro)` run on the fake's loop."""

    def __init__(self, fake: FakeT, *, name: str) -> None:
        self.fake = fake
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeT:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        self.run(self.fake.start())
        return self.fake

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self.run(self.fake.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._loop = self._thread = None

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) on the fake's loop thread; its result."""
        async def run() -> Any:
            return fn(*args, **kwargs)
        return self.run(run())

    def run(self, coro: Any, timeout: float = 10) -> Any:
        assert self._loop is not None, f"{self.name} is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> FakeT:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_until_interrupted(fake: Startable, banner: Callable[[], str]) -> None:
    """A developer's `python -m tests.fakes.X`: start the fake, print what to export
    (banner() once it listens), serve until Ctrl-C."""

    async def serve() -> None:
        await fake.start()
        print(banner(), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
