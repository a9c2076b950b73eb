""".env.example documents every setting with its default."""

from __future__ import annotations

from dataclasses import fields

from pgbouncer import render
from service.settings import ENVIRONMENT_DEFAULTS, PROJECT_DIR, Settings

# Unset by default: their values follow ENVIRONMENT or WECHAT_APPID.
FOLLOWING_OTHERS = {*ENVIRONMENT_DEFAULTS, "content_check"}


def documented() -> dict[str, str]:
    entries = {}
    for line in (PROJECT_DIR / ".env.example").read_text().splitlines():
        line = line.strip().removeprefix("#").strip()
        if "=" in line and line.split("=", 1)[0].isupper():
            key, value = line.split("=", 1)
            entries[key] = value
    return entries


def test_every_app_setting_is_documented():
    missing = {f.name.upper() for f in fields(Settings)} - set(documented())
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_every_pgbouncer_setting_is_documented_with_its_default():
    entries = documented()
    for name, (default, _) in render.SETTINGS.items():
        key = f"PGBOUNCER_{name.upper()}"
        assert key in entries, key
        assert entries[key] == default, key


def test_documented_app_defaults_are_the_real_ones():
    defaults = Settings()
    for f in fields(Settings):
        value = documented().get(f.name.upper())
        if f.name in FOLLOWING_OTHERS:
            assert value == "", f"{f.name}: documented as unset (its default follows others)"
        elif f.name not in {"media_dir", "work_dir"}:  # relative in the file, absolute here
            assert value == str(getattr(defaults, f.name)), f.name
