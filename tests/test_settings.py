"""Settings come from the environment in one place and report every bad value at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import errors
from service.settings import Settings, redact_url


def test_defaults_run_the_local_stack():
    s = Settings.from_env({})
    assert s.database_url == "postgresql://app:app-local-password@127.0.0.1:6432/videotasks"
    assert s.database_direct_url.endswith("@127.0.0.1:55432/videotasks")
    assert s.pgbouncer_admin_url.endswith("@127.0.0.1:6432/pgbouncer")
    assert (s.app_pool_min, s.app_pool_max, s.pool_timeout_s) == (1, 4, 2.0)
    assert (s.duration_min_s, s.duration_max_s, s.part_seconds) == (5, 60, 5)


def test_ports_move_the_derived_urls_but_explicit_urls_win():
    s = Settings.from_env({"PGBOUNCER_PORT": "7000", "POSTGRES_PORT": "7001"})
    assert ":7000/videotasks" in s.database_url
    assert ":7001/videotasks" in s.database_direct_url
    explicit = Settings.from_env({"DATABASE_URL": "postgresql://u:p@db:6432/x"})
    assert explicit.database_url == "postgresql://u:p@db:6432/x"


def test_values_are_converted_by_type():
    s = Settings.from_env({"APP_POOL_MAX": "8", "POOL_TIMEOUT_S": "1.5",
                           "MEDIA_DIR": "/tmp/media-x"})
    assert s.app_pool_max == 8
    assert s.pool_timeout_s == 1.5
    assert s.media_dir == Path("/tmp/media-x")


def test_every_bad_value_is_reported_in_one_error():
    with pytest.raises(errors.ConfigError) as caught:
        Settings.from_env({"APP_POOL_MAX": "many", "LEASE_S": "soon", "API_PORT": "x"})
    message = str(caught.value)
    for name in ("APP_POOL_MAX", "LEASE_S", "API_PORT"):
        assert name in message


def test_inconsistent_values_are_rejected():
    with pytest.raises(errors.ConfigError) as caught:
        Settings(app_pool_min=5, app_pool_max=2, heartbeat_interval_s=20, lease_s=30,
                 video_provider="magic", database_url="mysql://nope")
    message = str(caught.value)
    for fragment in ("APP_POOL_MIN", "HEARTBEAT_INTERVAL_S", "VIDEO_PROVIDER", "DATABASE_URL"):
        assert fragment in message


def test_production_backends_name_what_they_lack():
    with pytest.raises(errors.ConfigError) as caught:
        Settings(video_provider="ark", ark_api_key="", storage_backend="s3", s3_bucket="",
                 s3_addressing_style="sideways", s3_presign_ttl_s=10**7)
    message = str(caught.value)
    for fragment in ("ARK_API_KEY", "S3_BUCKET", "S3_ADDRESSING_STYLE", "S3_PRESIGN_TTL_S"):
        assert fragment in message
    # The defaults need no keys at all.
    assert Settings().video_provider == "ffmpeg" and Settings().storage_backend == "local"


def test_passwords_never_show_in_repr_or_description():
    s = Settings(database_url="postgresql://app:s3cret@db:6432/videotasks",
                 metrics_token="tok3n", ark_api_key="ark-k3y",
                 aws_secret_access_key="aws-s3cret")
    described = s.describe()
    for secret in ("s3cret", "tok3n", "ark-k3y", "aws-s3cret"):
        assert secret not in repr(s)
        assert secret not in str(described)
    assert redact_url("postgresql://a:b@h/d") == "postgresql://a:***@h/d"


PRODUCTION_URLS = {
    "database_url": "postgresql://app:prod-secret@pgbouncer:6432/videotasks",
    "database_direct_url": "postgresql://app:prod-secret@postgres:5432/videotasks",
    "database_owner_url": "postgresql://videotasks_owner:prod-owner@postgres:5432/videotasks",
    "pgbouncer_admin_url": "postgresql://pgbouncer_admin:prod-admin@pgbouncer:6432/pgbouncer",
    "auth_token_secret": "p" * 32, "public_base_url": "https://video.example.com",
}


def test_dev_login_is_on_locally_without_wechat_and_never_in_production():
    assert Settings.from_env({}).dev_login is True
    # WeChat configured: logins are WeChat's, unless DEV_LOGIN says otherwise.
    with_wechat = Settings(wechat_appid="wx1", wechat_secret="s", content_check=False)
    assert with_wechat.dev_login is False
    assert Settings(wechat_appid="wx1", wechat_secret="s", content_check=False,
                    dev_login=True).dev_login is True
    assert Settings.from_env({"DEV_LOGIN": "false"}).dev_login is False
    production = Settings(environment="production", content_check=False, **PRODUCTION_URLS)
    assert production.dev_login is False
    with pytest.raises(errors.ConfigError, match="unset DEV_LOGIN"):
        Settings(environment="production", content_check=False, dev_login=True,
                 **PRODUCTION_URLS)


def test_dev_login_follows_wechat_appid_through_replace_unless_set():
    local = Settings()
    assert local.replace(wechat_appid="wx1", wechat_secret="s",
                         content_check=False).dev_login is False
    explicit = Settings(wechat_appid="wx1", wechat_secret="s", content_check=False,
                        dev_login=True)
    assert explicit.replace(api_port=8001).dev_login is True
    assert Settings(dev_login=False).replace(api_port=8001).dev_login is False
