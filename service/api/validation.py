"""Validation of the create-task request: every rule names its field."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from service import tasks
from service.settings import Settings

VIDEO_TYPES = frozenset({"video"})
IDEMPOTENCY_KEY_MAX_CHARS = 200
# Subscribe-message template ids are 43 characters of base64url; allow some room.
TEMPLATE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Emoji and pictographs: the video fonts have no glyphs for them (they would render as
# empty boxes), so they are refused here rather than shown broken on the video. Ranges:
# pictographs, emoticons, transport, supplemental symbols and flags; miscellaneous
# symbols and dingbats; variation selectors, the zero-width joiner, keycaps and tags
# that build emoji sequences.
EMOJI_RANGES = ((0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2B00, 0x2BFF), (0xFE00, 0xFE0F),
                (0x200D, 0x200D), (0x20E3, 0x20E3), (0xE0000, 0xE007F))


def is_emoji(ch: str) -> bool:
    code = ord(ch)
    return any(low <= code <= high for low, high in EMOJI_RANGES)


# The create body's fields; any other is refused (a client never sets status, video_url...).
CREATE_FIELDS = frozenset({"product_name", "theme", "duration", "type", "template_id"})
# Integers longer than this are out of every range we accept: not parsed (Python refuses
# over 4300 digits anyway), reported as out of range by the field's own rule.
INT_MAX_DIGITS = 32
# Unicode categories refused in text: control (Cc: NUL, escapes), format (Cf: bidi
# overrides such as U+202E that make a name render reversed, zero-width spaces and
# joiners that make a blank name look filled), surrogates (Cs: cannot be UTF-8), private
# use (Co) and unassigned (Cn). Refused, never stripped: the stored text is what was sent.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


class BadJson(Exception):
    """The body is not one JSON document we accept; the API answers 400 invalid_json."""

    def __init__(self, message: str, *, field: str = "body") -> None:
        super().__init__(message)
        self.message, self.field = message, field


def parse_json(raw: bytes) -> Any:
    """The body as JSON, strictly: UTF-8 only, no duplicate keys (a proxy and the API
    might read different values), no NaN or Infinity, bounded nesting. Numbers too large
    for any field parse as infinities, which the field's range rule then refuses."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson("the body is not valid UTF-8") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_no_constants, parse_int=_bounded_int)
    except BadJson:
        raise
    except RecursionError as exc:
        raise BadJson("the body is nested too deeply") from exc
    except ValueError as exc:
        raise BadJson("the body is not valid JSON") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise BadJson(f"the key {key!r} appears twice in one object", field=key or "body")
        found[key] = value
    return found


def _no_constants(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def _bounded_int(digits: str) -> int | float:
    if len(digits.lstrip("-")) > INT_MAX_DIGITS:
        return -math.inf if digits.startswith("-") else math.inf
    return int(digits)


@dataclass(frozen=True)
class Invalid(Exception):
    """Raised when the request breaks a rule; the API answers 400 naming the field."""

    field: str
    message: str


def create_request(body: Any, settings: Settings, idempotency_key: str | None, *,
                   owner_openid: str | None = None, requester: str = "",
                   notices_available: bool = False) -> tasks.NewTask:
    if not isinstance(body, dict):
        raise Invalid("body", "the body must be a JSON object")
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        # An empty key still gets a field to name: the body.
        raise Invalid(unknown[0] or "body", f"unknown field {unknown[0]!r}; the fields are "
                                  f"{', '.join(sorted(CREATE_FIELDS))}")
    product_name = _text(body, "product_name", settings.text_max_chars)
    theme = _text(body, "theme", settings.text_max_chars)
    duration = _duration(body, settings)
    video_type = body.get("type")
    if not isinstance(video_type, str) or video_type not in VIDEO_TYPES:
        raise Invalid("type", 'type is required and must be "video"')
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
    template_id = _template_id(body, owner_openid, notices_available)
    fields: dict[str, Any] = {"product_name": product_name, "theme": theme, "duration": duration,
              "type": video_type, "notice_template_id": template_id}
    # The owner is part of the request: one user's Idempotency-Key never answers another's.
    fingerprint = hashlib.sha256(orjson.dumps({**fields, "owner": owner_openid},
                                              option=orjson.OPT_SORT_KEYS)).hexdigest()
    return tasks.NewTask(
        **fields,
        total_parts=tasks.part_count(duration, settings.part_seconds),
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        owner_openid=owner_openid,
        requester=requester,
    )


def _template_id(body: dict[str, Any], owner_openid: str | None,
                 notices_available: bool) -> str | None:
    """The optional subscribe-message template id (from wx.requestSubscribeMessage)."""
    value = body.get("template_id")
    if value is None:
        return None
    if not isinstance(value, str) or not TEMPLATE_ID_PATTERN.fullmatch(value):
        raise Invalid("template_id", "template_id must be the subscribe-message template id "
                                     "(1 to 128 letters, digits, - or _)")
    if not owner_openid:
        raise Invalid("template_id", "template_id needs a logged-in user (POST /api/login): "
                                     "the message goes to the user's WeChat")
    if not notices_available:
        raise Invalid("template_id", "this server sends no subscribe messages "
                                     "(WECHAT_APPID is not set)")
    return value


# `?wait=`: seconds as the client writes them, e.g. 25 or 2.5.
WAIT_PATTERN = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,3})?$")
# `?since=`: an `updated_at` as progress answers it (ISO 8601 with its offset).
SINCE_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                           r"(\.[0-9]{1,6})?([+-][0-9]{2}:[0-9]{2}|Z)$")
UNENCODED_PLUS = re.compile(r" ([0-9]{2}:[0-9]{2})$")


def progress_wait(query: Mapping[str, str], max_wait_s: float) -> tuple[float, datetime | None]:
    """(seconds to wait, the updated_at the client saw) of a progress poll; (0, None) for
    a plain one. A wait over the server's limit is cut to it."""
    wait_s = 0.0
    if "wait" in query:
        raw = query["wait"]
        if not WAIT_PATTERN.fullmatch(raw):
            raise Invalid("wait", f"wait must be a number of seconds (at most "
                                  f"{max_wait_s:g} are waited)")
        wait_s = min(float(raw), max_wait_s)
    since = None
    if "since" in query:
        raw = query["since"]
        try:
            # An offset's "+" left unencoded arrives as a space: read it as meant.
            raw = UNENCODED_PLUS.sub(r"+\1", raw)
            if not SINCE_PATTERN.fullmatch(raw):
                raise ValueError(raw)
            since = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise Invalid("since", "since must be the updated_at of an earlier answer "
                                   "(ISO 8601 with its UTC offset; in a URL, + is %2B)"
                          ) from exc
    return wait_s, since


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    """The opaque `next` of a "my videos" page: where the page ended."""
    raw = orjson.dumps([created_at.isoformat(), str(task_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, task_id = orjson.loads(raw)
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when, uuid.UUID(task_id)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise Invalid("cursor", "cursor must be the `next` of an earlier page") from exc


def _text(body: dict[str, Any], name: str, max_chars: int) -> str:
    value = body.get(name)
    if value is None:
        raise Invalid(name, f"{name} is required")
    if not isinstance(value, str):
        raise Invalid(name, f"{name} must be a string")
    # The limit counts what was sent, before trimming: what the spec's maxLength says.
    if len(value) > max_chars:
        raise Invalid(name, f"{name} must be at most {max_chars} characters")
    value = value.strip()
    if not value:
        raise Invalid(name, f"{name} must not be empty")
    # NUL cannot be stored in PostgreSQL text, lone surrogates cannot be encoded as UTF-8,
    # and control and format characters have no place in a name shown on a video.
    # Emoji first: their joiners and variation selectors are format characters too.
    if any(is_emoji(ch) for ch in value):
        raise Invalid(name, f"{name} must not contain emoji (the video cannot show them)")
    if any(unicodedata.category(ch) in REFUSED_CATEGORIES for ch in value):
        raise Invalid(name, f"{name} must not contain control, format (bidi, zero-width) "
                            "or invalid characters")
    return value


def _duration(body: dict[str, Any], settings: Settings) -> int:
    value = body.get("duration")
    if value is None:
        raise Invalid("duration", "duration is required")
    # JSON true is a Python int; 5.0 is a whole number written as a float.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("duration", "duration must be a whole number of seconds")
    if isinstance(value, float) and math.isinf(value):
        raise Invalid("duration", f"duration must be between {settings.duration_min_s} and "
                                  f"{settings.duration_max_s} seconds")
    if isinstance(value, float):
        if not value.is_integer():
            raise Invalid("duration", "duration must be a whole number of seconds")
        value = int(value)
    if not settings.duration_min_s <= value <= settings.duration_max_s:
        raise Invalid("duration", f"duration must be between {settings.duration_min_s} and "
                                  f"{settings.duration_max_s} seconds")
    return value


def _check_idempotency_key(key: str) -> None:
    if not key or len(key) > IDEMPOTENCY_KEY_MAX_CHARS or not key.isascii() \
            or not key.isprintable():
        raise Invalid("Idempotency-Key", "the Idempotency-Key header must be 1 to "
                                         f"{IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII characters")
