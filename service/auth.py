"""The app's own login tokens: signed, expiring, checked without a database round trip.

After WeChat login (service.wechat.code2session) the API hands the mini-program a token of
its own, the "3rd_session" of WeChat's login guide; session_key never leaves the server.
Any API process verifies a token with the shared secret alone, so there is no session
table to read on every request and no state to share between processes.

Format (internal, so no JWT library: no algorithm negotiation, no "alg": "none", one
fixed algorithm and one payload shape):

    v1.<base64url(payload)>.<base64url(HMAC-SHA256(secret, "v1." + base64url(payload)))>

payload is compact JSON {"o": openid, "i": issued_at, "e": expires_at} (Unix seconds). The
payload is signed, not encrypted: the client can read its own openid and expiry, which is
no secret from the user it belongs to. The signature is checked before the payload is
parsed; base64 must be canonical, so one token has exactly one spelling.

Rotation: pass a list of secrets, newest first. `issue` signs with the first; `verify`
accepts any of them. Roll a new secret in front, and drop the old one after
AUTH_TOKEN_TTL_S; tokens signed with the old one keep working until then.

Revocation before expiry is not built in: keep the TTL short (hours to a few days) and
let the client log in again (wx.login is silent); `claims()` gives issued_at for a caller
that wants a "not before" cut-off per user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from service import errors

VERSION = "v1"
# HMAC-SHA256 keys shorter than the hash add nothing but guessability.
MIN_SECRET_BYTES = 32
# A real token is ~130 characters; anything far longer is refused before any work.
MAX_TOKEN_CHARS = 1024
MAX_OPENID_CHARS = 128
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")

Reason = Literal["malformed", "bad_signature", "expired"]
Secrets = str | bytes | Sequence[str | bytes]


class InvalidToken(errors.ServiceError):
    """Raised by verify() when a login token is malformed, forged or expired: the API
    answers 401 and the client logs in again. `reason` says which; the token itself is
    never part of the message."""

    def __init__(self, reason: Reason) -> None:
        self.reason: Reason = reason
        super().__init__(f"login token is invalid ({reason.replace('_', ' ')})")


@dataclass(frozen=True)
class Claims:
    openid: str
    issued_at: int  # Unix seconds
    expires_at: int  # Unix seconds; the token is refused from this second on


def key_ring(current: str, previous: str = "") -> list[str]:
    """The secrets for issue/verify from two settings: the current one, and earlier ones
    still accepted (comma-separated, may be empty)."""
    return [current, *(s.strip() for s in previous.split(",") if s.strip())]


def issue(openid: str, *, secret: Secrets, ttl_s: int, now: float | None = None) -> str:
    """A token for `openid`, valid for ttl_s seconds, signed with the first secret."""
    if not openid or len(openid) > MAX_OPENID_CHARS:
        raise ValueError(f"openid must be 1 to {MAX_OPENID_CHARS} characters")
    if ttl_s < 1:
        raise ValueError("ttl_s must be at least 1")
    issued = int(time.time() if now is None else now)
    payload = json.dumps({"o": openid, "i": issued, "e": issued + int(ttl_s)},
                         separators=(",", ":"), ensure_ascii=True).encode()
    signed = f"{VERSION}.{_b64encode(payload)}"
    return f"{signed}.{_b64encode(_sign(_keys(secret)[0], signed))}"


def verify(token: str, *, secret: Secrets, now: float | None = None) -> str:
    """The openid a valid token was issued for; raises InvalidToken otherwise."""
    return claims(token, secret=secret, now=now).openid


def claims(token: str, *, secret: Secrets, now: float | None = None) -> Claims:
    """Everything a valid token says; raises InvalidToken otherwise."""
    keys = _keys(secret)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("malformed")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise InvalidToken("malformed")
    signed = f"{parts[0]}.{parts[1]}"
    payload, signature = _b64decode(parts[1]), _b64decode(parts[2])
    # Every key is tried (no early exit), each compare in constant time.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_sign(key, signed), signature)
    if not matched:
        raise InvalidToken("bad_signature")
    try:
        data = json.loads(payload)
        openid, issued, expires = data["o"], data["i"], data["e"]
    except (ValueError, TypeError, KeyError):
        raise InvalidToken("malformed") from None
    if (not isinstance(openid, str) or not openid or type(issued) is not int
            or type(expires) is not int or expires <= issued):
        raise InvalidToken("malformed")
    if (time.time() if now is None else now) >= expires:
        raise InvalidToken("expired")
    return Claims(openid=openid, issued_at=issued, expires_at=expires)


def _keys(secret: Secrets) -> list[bytes]:
    ring = [secret] if isinstance(secret, str | bytes) else list(secret)
    keys = [s.encode() if isinstance(s, str) else bytes(s) for s in ring]
    # A configuration error, not a bad token: an empty or short key would sign anything.
    if not keys or any(len(k) < MIN_SECRET_BYTES for k in keys):
        raise errors.ConfigError(f"AUTH_TOKEN_SECRET must be at least {MIN_SECRET_BYTES} "
                                 "bytes (e.g. `python -c 'import secrets; "
                                 "print(secrets.token_urlsafe(32))'`)")
    return keys


def _sign(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.match(text):
        raise InvalidToken("malformed")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed") from None
    # Unused trailing bits could give one value several spellings.
    if _b64encode(raw) != text:
        raise InvalidToken("malformed")
    return raw
