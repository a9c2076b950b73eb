"""Property tests of the create request's validators: whatever a client sends, the
answer is a task whose every field keeps the rules, or a refusal naming a field; never
anything else (no exception the API would turn into a 500)."""

from __future__ import annotations

import json
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from service.api import validation
from service.settings import Settings

SETTINGS = Settings()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=8)
FIELDS = [*sorted(validation.CREATE_FIELDS), "status", "video_url", ""]
# Bodies close to valid, so that the accepted branch is exercised as much as the refusals.
NEAR_VALID = st.fixed_dictionaries(
    {"product_name": st.text(max_size=110), "theme": st.text(max_size=110),
     "duration": st.integers(0, 70) | st.floats(0, 70), "type": st.sampled_from(["video",
                                                                                   "Video"])},
    optional={"template_id": st.text(max_size=10)})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_bad_json(raw: bytes) -> None:
    try:
        validation.parse_json(raw)
    except validation.BadJson as exc:
        assert exc.message and exc.field


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6) | NEAR_VALID,
       st.one_of(st.none(), st.text(max_size=40)), st.one_of(st.none(), st.text(max_size=8)))
def test_any_body_is_a_valid_task_or_a_refusal_naming_a_field(body, key, owner) -> None:
    try:
        new = validation.create_request(body, SETTINGS, key, owner_openid=owner or None,
                                        requester="addr:x", notices_available=True)
    except validation.Invalid as exc:
        assert exc.field and exc.message
        return
    assert set(body) <= validation.CREATE_FIELDS
    for text in (new.product_name, new.theme):
        assert text == text.strip() and 0 < len(text) <= SETTINGS.text_max_chars
        assert not any(unicodedata.category(ch) in validation.REFUSED_CATEGORIES
                       or validation.is_emoji(ch) for ch in text)
    assert SETTINGS.duration_min_s <= new.duration <= SETTINGS.duration_max_s
    assert isinstance(new.duration, int) and new.type == "video"
    assert new.total_parts * SETTINGS.part_seconds >= new.duration


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.text(max_size=120), st.integers(-10, 100))
def test_a_body_through_json_is_judged_like_the_same_dict(name, theme, duration) -> None:
    """parse_json then create_request gives the same verdict as the object itself: the
    JSON layer neither loses nor invents anything."""
    body = {"product_name": name, "theme": theme, "duration": duration, "type": "video"}

    def verdict(value: object) -> object:
        try:
            return validation.create_request(value, SETTINGS, None)
        except validation.Invalid as exc:
            return exc.field

    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        parsed = validation.parse_json(raw)
    except validation.BadJson:
        # Only a lone surrogate, which UTF-8 cannot carry, may fail to parse.
        assert any(0xD800 <= ord(ch) <= 0xDFFF for ch in name + theme)
        return
    assert verdict(parsed) == verdict(body)
