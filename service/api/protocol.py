"""The HTTP layer below the app: its own errors in the one JSON shape, and slow clients.

aiohttp answers a request it cannot parse (a header over the size limit, a bad request
line) itself, before any middleware, in plain text that quotes the offending bytes. The
request handler here answers those in the app's error shape and quotes nothing. It also
gives a new connection REQUEST_READ_TIMEOUT_S to send its first request's headers
(aiohttp has no such deadline: a client trickling a header in would hold the connection
as long as it liked); later requests on the connection are bounded by the keep-alive
timeout, and bodies by the app's own read deadline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from service.api.app import ApiError, error_response
from service.settings import Settings

logger = logging.getLogger(__name__)

TIMEOUT_MESSAGE = "the request did not arrive in time"
# After answering a request whose body was not read (a 408, a 413), aiohttp reads and
# drops the rest for this long before closing, so the client sees the answer rather than
# a reset; its default (10 s) would let a trickling client keep the connection anyway.
LINGERING_S = 1.0


def http_error(status: int, exc: BaseException | None, *, max_field_size: int) -> ApiError:
    """What a client is told when aiohttp could not read its request."""
    if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage)
                                        and "Too many headers" in exc.message):
        return ApiError(431, "headers_too_large",
                        f"a header or the request line is too long or there are too many "
                        f"headers (at most {max_field_size} bytes each)")
    if status == 500:
        return ApiError(500, "internal_error", "internal server error")
    return ApiError(400, "bad_request", "the request is not valid HTTP/1.1")


class ApiRequestHandler(RequestHandler):
    def __init__(self, *args: Any, headers_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_field_size = kwargs.get("max_field_size", 8190)
        self._headers_timeout_s = headers_timeout_s
        self._headers_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._headers_deadline = asyncio.get_running_loop().call_later(
            self._headers_timeout_s, self._headers_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
        super().connection_lost(exc)

    def _headers_timed_out(self) -> None:
        self._headers_deadline = None
        if self._request_count or self.transport is None or self.transport.is_closing():
            return  # a whole request arrived: its body has the app's own deadline
        logger.info("closing a connection that sent no complete request in %.0f s",
                    self._headers_timeout_s)
        response = error_response(ApiError(408, "request_timeout", TIMEOUT_MESSAGE))
        assert isinstance(response.body, bytes)
        head = (f"HTTP/1.1 408 Request Timeout\r\nContent-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n")
        self.transport.write(head.encode("ascii") + response.body)
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started")
        error = http_error(status, exc, max_field_size=self._max_field_size)
        # The exception's text quotes what the client sent: only its kind is logged.
        log = logger.error if error.status == 500 else logger.info
        log("%d %s from %s (%s)", error.status, error.code, request.remote,
            type(exc).__name__ if exc else "-", exc_info=error.status == 500)
        response = error_response(error)
        response.force_close()
        return response


class ApiServer(web.Server):
    headers_timeout_s: float

    def __call__(self) -> RequestHandler:
        return ApiRequestHandler(self, loop=self._loop, headers_timeout_s=self.headers_timeout_s,
                                 **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections are ApiRequestHandlers."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=settings.keepalive_timeout_s,
                         lingering_time=LINGERING_S, **kwargs)
        self._headers_timeout_s = settings.request_read_timeout_s

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        server = ApiServer(made.request_handler, request_factory=made.request_factory,
                           handler_cancellation=made.handler_cancellation,
                           loop=made._loop, **made._kwargs)
        server.headers_timeout_s = self._headers_timeout_s
        return server
