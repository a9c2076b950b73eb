"""A minimal HTTP/1.1 keep-alive client for the load generator.

The benchmark shares two cores with the service, PostgreSQL and PgBouncer, so every
microsecond the load generator spends is taken from what it measures. aiohttp's client
costs about three times what this one does per request (measured here: 78-112 us against
28-33 us of CPU): one connection per simulated user, one request at a time, requests
written as prepared bytes, and only the status line, Content-Length and Retry-After read
from the answer. It understands exactly
what the service sends (bodies with Content-Length); anything else is a client error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class HttpClientError(Exception):
    """Raised when a request gets no HTTP answer: connection refused, closed or timed out."""


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: bytes | None


class _Protocol(asyncio.Protocol):
    __slots__ = ("buf", "closed", "transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpClientError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end])
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            waiter.set_exception(HttpClientError(f"bad status line {lines[0][:40]!r}"))
            return
        length = 0
        retry_after = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"retry-after":
                retry_after = value.strip()
            elif name == b"transfer-encoding":
                waiter.set_exception(HttpClientError("chunked answers are not expected"))
                return
        total = end + 4 + length
        if len(self.buf) < total:
            return
        body = bytes(self.buf[end + 4:total])
        del self.buf[:total]
        waiter.set_result(Answer(status, body, retry_after))


class Connection:
    """One keep-alive connection, one request at a time; reconnects when closed."""

    __slots__ = ("host", "port", "protocol")

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.protocol: _Protocol | None = None

    async def request(self, data: bytes, timeout_s: float) -> Answer:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                protocol = self.protocol
                if protocol is None or protocol.closed:
                    _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
                    self.protocol = protocol
                protocol.waiter = waiter = loop.create_future()
                protocol.transport.write(data)  # type: ignore[union-attr]
                return await waiter
        except TimeoutError as exc:
            self.close()
            raise HttpClientError("timeout") from exc
        except OSError as exc:
            self.close()
            raise HttpClientError(type(exc).__name__) from exc
        except HttpClientError:
            self.close()
            raise
        finally:
            if self.protocol is not None:
                self.protocol.waiter = None

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None


def get_request(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def post_json_request(path: str, host: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
