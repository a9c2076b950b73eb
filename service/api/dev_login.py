"""POST /api/dev-login: the local stack's login without WeChat, for the demo page at /.

The mini-program logs in with `wx.login()` and POST /api/login, which needs WeChat
(WECHAT_APPID). A browser on the local stack has neither, so DEV_LOGIN (on by default
locally without WECHAT_APPID; ENVIRONMENT=production refuses it) adds this route:
`{"user": "alice"}` answers the same token POST /api/login would, for the openid
`dev:alice`. Without DEV_LOGIN the route does not exist (404).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from service import auth
from service.api import validation
from service.settings import Settings

# The openid of a development user: never one WeChat issues (WeChat's have no colon).
OPENID_PREFIX = "dev:"
USER_MAX_CHARS = 32
USER_PATTERN = re.compile(rf"^[A-Za-z0-9_-]{{1,{USER_MAX_CHARS}}}$")
FIELDS = frozenset({"user"})
PATH = "/api/dev-login"


def enabled(settings: Settings) -> bool:
    """Whether this server answers POST /api/dev-login."""
    return bool(settings.dev_login)


def user_of(body: Any) -> str:
    """The body's `user`, or validation.Invalid naming what is wrong (400)."""
    if not isinstance(body, dict):
        raise validation.Invalid("body", "the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise validation.Invalid(unknown[0] or "body",
                                 f"unknown field {unknown[0]!r}; the only field is user")
    user = body.get("user")
    if not isinstance(user, str) or not USER_PATTERN.fullmatch(user):
        raise validation.Invalid("user", f"user is required: 1 to {USER_MAX_CHARS} letters, "
                                         "digits, - or _")
    return user


async def login(request: web.Request) -> web.Response:
    """`{"user": ...}` -> `{token, expires_in}` for openid dev:<user>, as POST /api/login."""
    # Imported here: service.api.app imports this module (through pages) to register it.
    from service.api import app as api

    settings = request.app[api.SETTINGS_KEY]
    user = user_of(await api.json_body(request))
    token = auth.issue(OPENID_PREFIX + user,
                       secret=auth.key_ring(settings.auth_token_secret,
                                            settings.auth_token_previous_secrets),
                       ttl_s=settings.auth_token_ttl_s)
    return api.json_response({"token": token, "expires_in": settings.auth_token_ttl_s})
