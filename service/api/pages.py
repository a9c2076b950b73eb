"""The two pages: the demo at / and the /ops dashboard, plain files from ./static.

No build step and nothing from a CDN: HTML, CSS and JavaScript as written, and uPlot
(MIT, vendored from the npm package with its licence in static/vendor/uplot/) for the
dashboard's charts. Both pages work offline against the API that serves them.

- `/` is the mini-program's flow in a phone-sized page: log in (POST /api/dev-login on
  the local stack, see service.api.dev_login), create, poll the progress, play the video,
  "my videos".
- `/ops` plots `GET /ops/data` every second: the doctor's report of one shared sample
  (service.doctor.snapshot) and this process's pool. It is protected like /metrics:
  on the public port both exist only when METRICS_TOKEN is set, and the data needs
  `Authorization: Bearer <METRICS_TOKEN>` (the page asks for the token once, or takes it
  from `/ops#token=...`: a fragment never reaches a server or its logs, and keeps it in
  sessionStorage). On the metrics listener (METRICS_HOST:METRICS_PORT), which is never
  public, both are served without a token, like its /metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from service import metrics
from service.api import dev_login
from service.settings import Settings

if TYPE_CHECKING:
    from service.doctor.snapshot import Snapshots

STATIC_DIR = Path(__file__).with_name("static")
DEMO_PATH = "/"
OPS_PATH = "/ops"
OPS_DATA_PATH = "/ops/data"
ASSET_PATH = "/static/{name}"
# What /static/ serves, by name: (file under STATIC_DIR, Content-Type). Nothing else is
# looked up on disk.
ASSETS: dict[str, tuple[str, str]] = {
    "demo.css": ("demo.css", "text/css"),
    "demo.js": ("demo.js", "text/javascript"),
    "ops.css": ("ops.css", "text/css"),
    "ops.js": ("ops.js", "text/javascript"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css"),
}
HTML = "text/html"
# The pages load only their own files and talk only to their own origin; the video may
# come from elsewhere (a CDN, presigned S3).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' http: https:; connect-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated every time (ETag): an upgrade shows at once.
    "Cache-Control": "no-cache",
}


class Dashboard:
    """GET /ops/data of one process: the doctor loads on the first request (an API that
    never shows /ops never imports it), then one shared Snapshots."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._snapshots: Snapshots | None = None
        self.closed = False

    async def data(self, pool: AsyncConnectionPool | None) -> bytes:
        from service.doctor import snapshot

        if self.closed:
            raise web.HTTPServiceUnavailable()
        if self._snapshots is None:
            self._snapshots = snapshot.Snapshots(self.settings)
        report = await self._snapshots.report()
        stats = pool.get_stats() if pool is not None else None
        return orjson.dumps(snapshot.dashboard_json(report, stats), default=str,
                            option=orjson.OPT_NON_STR_KEYS)

    async def close(self) -> None:
        self.closed = True
        if self._snapshots is not None:
            await self._snapshots.close()


DASHBOARD_KEY = web.AppKey("dashboard", Dashboard)


def register(app: web.Application) -> None:
    """The pages' routes on the public app (create_app calls this)."""
    # Imported here: service.api.app imports this module to call this function.
    from service.api import app as api

    settings = app[api.SETTINGS_KEY]
    app[DASHBOARD_KEY] = Dashboard(settings)
    app.cleanup_ctx.append(_dashboard_ctx)
    app.router.add_get(DEMO_PATH, demo_page)
    app.router.add_get(ASSET_PATH, asset)
    app.router.add_get(OPS_PATH, ops_page)
    app.router.add_get(OPS_DATA_PATH, ops_data)
    if dev_login.enabled(settings):
        app.router.add_post(dev_login.PATH, dev_login.login)


def metrics_port_routes(app: web.Application) -> list[web.RouteDef]:
    """/ops, its data and files on the metrics listener, without a token like its /metrics;
    `app` is the public app whose pool and dashboard they show."""

    async def page(_request: web.Request) -> web.StreamResponse:
        return _page("ops.html")

    async def data(_request: web.Request) -> web.Response:
        return await _data(app)

    return [web.get(OPS_PATH, page), web.get(OPS_DATA_PATH, data), web.get(ASSET_PATH, asset)]


async def demo_page(request: web.Request) -> web.StreamResponse:
    return _page("index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    known = ASSETS.get(request.match_info["name"])
    if known is None:
        # The public app's middleware answers it as JSON; the metrics listener has none.
        raise web.HTTPNotFound()
    name, content_type = known
    return web.FileResponse(STATIC_DIR / name,
                            headers={**PAGE_HEADERS, "Content-Type": content_type})


async def ops_page(request: web.Request) -> web.StreamResponse:
    """The dashboard on the public port: only where /metrics is (METRICS_TOKEN set). The
    page holds no data; its data needs the token."""
    from service.api import app as api

    if not request.app[api.SETTINGS_KEY].metrics_token:
        raise web.HTTPNotFound()
    return _page("ops.html")


async def ops_data(request: web.Request) -> web.Response:
    """The dashboard's data on the public port: `Authorization: Bearer METRICS_TOKEN`."""
    from service.api import app as api

    token = request.app[api.SETTINGS_KEY].metrics_token
    if not token:
        raise web.HTTPNotFound()
    if not metrics.authorized(request.headers.get("Authorization"), token):
        raise api.ApiError(401, "unauthorized",
                           "/ops/data needs Authorization: Bearer <METRICS_TOKEN>",
                           headers={"WWW-Authenticate": "Bearer"})
    return await _data(request.app)


async def _data(app: web.Application) -> web.Response:
    from service.api import app as api

    body = await app[DASHBOARD_KEY].data(app.get(api.POOL_KEY))
    return web.Response(body=body, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / name,
                            headers={**PAGE_HEADERS, "Content-Type": f"{HTML}; charset=utf-8"})


async def _dashboard_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[DASHBOARD_KEY].close()
