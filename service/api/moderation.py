"""Content safety of create requests: product name and theme through WeChat's
msg_sec_check (v2, scene 1, the caller's openid) before anything is stored.

WeChat reviews mini-programs that publish user text by trying sensitive words on them,
and the text becomes a video shown to others. "risky" is refused; "review" (WeChat is
unsure) is accepted and logged with WeChat's trace id. With no verdict (WeChat
unreachable or busy, or a caller without an openid, whom msg_sec_check cannot take)
CONTENT_CHECK_FAIL_OPEN decides: accept, or refuse with 503.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from service import wechat
from service.settings import Settings

logger = logging.getLogger(__name__)

# What the mini-program shows the user when WeChat finds the text risky.
REJECTED_MESSAGE = ("内容未通过安全检测，请修改产品名称或主题后重试 / the product name or theme "
                    "did not pass WeChat's content check; change them and try again")
UNAVAILABLE_MESSAGE = ("内容安全检测暂时不可用，请稍后再试 / the content check is unavailable "
                       "right now; retry later")


class Screening(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    # No verdict, and CONTENT_CHECK_FAIL_OPEN is off: refuse for now.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Outcome:
    screening: Screening
    # For the metrics: pass, review, risky, unavailable_accepted, unavailable_refused.
    verdict: str


async def screen(client: wechat.WeChat | None, settings: Settings, *, openid: str | None,
                 texts: list[str]) -> Outcome:
    """WeChat's verdict on the texts as what the API does with the request."""
    if client is None or not openid:
        why = "WeChat login is not configured" if client is None else "an anonymous caller"
        return _no_verdict(settings, why)
    try:
        verdict = await client.check_texts(openid=openid, texts=texts, scene=1)
    except wechat.WeChatError as exc:
        return _no_verdict(settings, exc.message)
    if verdict.suggest == "risky":
        logger.info("content check: risky (label %d, trace %s): refused", verdict.label,
                    verdict.trace_id or "-")
        return Outcome(Screening.REJECTED, "risky")
    if verdict.suggest == "review":
        logger.warning("content check: WeChat unsure (label %d, trace %s): accepted",
                       verdict.label, verdict.trace_id or "-")
    return Outcome(Screening.ACCEPTED, verdict.suggest)


def _no_verdict(settings: Settings, why: str) -> Outcome:
    if settings.content_check_fail_open:
        logger.warning("content check: no verdict (%s); accepted (CONTENT_CHECK_FAIL_OPEN)",
                       why)
        return Outcome(Screening.ACCEPTED, "unavailable_accepted")
    logger.warning("content check: no verdict (%s); refused", why)
    return Outcome(Screening.UNAVAILABLE, "unavailable_refused")
