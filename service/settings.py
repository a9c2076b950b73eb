"""Settings: the only module that reads the environment.

Every default runs the local stack (`make run`). `Settings.from_env()` reports every
bad value in one error; tests build `Settings(...)` directly.

Every entry point (the `video-tasks` CLI, `python -m service`, the ops/ scripts, make)
reads the same settings: the process environment, over one `.env` file read by
python-dotenv (`load_environ`). The file is $VIDEO_TASKS_ENV_FILE if that is set (empty:
no file), else `.env` in the current directory, else `.env` in the project directory
(the checkout this package runs from). A relative path in the file is relative to the
file's directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import dotenv
import psycopg
from psycopg.conninfo import conninfo_to_dict

from service import errors

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Names the .env file to read; set but empty: none (the tests' and benchmark's stacks).
ENV_FILE_VARIABLE = "VIDEO_TASKS_ENV_FILE"
ENV_FILE_NAME = ".env"
# Credentials of the local stack (make run, tests). Production sets the URLs.
LOCAL_DB_NAME = "videotasks"
LOCAL_APP_USER = "app:app-local-password"
LOCAL_ADMIN_USER = "pgbouncer_admin:admin-local-password"
# Owns the schema and runs the migrations; the app's role only reads and writes the tasks.
LOCAL_OWNER_USER = "videotasks_owner:owner-local-password"


# Shown as *** by describe(); URLs with passwords are redacted instead.
SECRET_FIELDS = frozenset({"metrics_token", "ark_api_key", "aws_access_key_id",
                           "aws_secret_access_key", "wechat_secret", "auth_token_secret",
                           "auth_token_previous_secrets"})
# Signs the local stack's login tokens; production sets its own AUTH_TOKEN_SECRET.
LOCAL_AUTH_TOKEN_SECRET = "local-stack-token-secret-not-for-production"
VIDEO_PROVIDERS = ("ffmpeg", "ark", "simulated")
STORAGE_BACKENDS = ("local", "s3")
S3_ADDRESSING_STYLES = ("auto", "path", "virtual")
ENVIRONMENTS = ("local", "production")
# What a subscribe message's template fields may carry (WECHAT_NOTICE_DATA).
NOTICE_SOURCES = ("product_name", "theme", "status", "finished_at", "task_id", "note")
# Settings left unset (None) take the ENVIRONMENT's default: on in production, where the
# API faces the internet; off on the local stack, so the write-up's curl works as is.
ENVIRONMENT_DEFAULTS: dict[str, dict[str, bool]] = {
    "auth_required": {"local": False, "production": True},
    "content_check_fail_open": {"local": True, "production": False},
    # POST /api/dev-login (the demo page's login where there is no WeChat): local only,
    # and off by default when WECHAT_APPID is set (_dev_login_default).
    "dev_login": {"local": True, "production": False},
}


@dataclass(frozen=True)
class Settings:
    # "production" turns on what a public deployment needs (ENVIRONMENT_DEFAULTS).
    environment: str = "local"
    # Ports of the local stack; the three URLs below are derived from them when unset.
    postgres_port: int = 55432
    pgbouncer_port: int = 6432
    # Through PgBouncer (transaction mode): what the API and worker use.
    database_url: str = field(default="", repr=False)
    # Straight to PostgreSQL as the app's role: diagnostics (the doctor) only.
    database_direct_url: str = field(default="", repr=False)
    # Straight to PostgreSQL as the schema's owner: migrations only. The app's role can
    # read and write the task tables and nothing else (no DDL).
    database_owner_url: str = field(default="", repr=False)
    # PgBouncer's admin console (virtual database "pgbouncer"): SHOW POOLS and the like.
    pgbouncer_admin_url: str = field(default="", repr=False)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Several API processes share the port with SO_REUSEPORT.
    api_processes: int = 1
    # The base of video_url; empty: http://API_HOST:API_PORT (follows the port).
    public_base_url: str = ""
    request_max_bytes: int = 16 * 1024
    # A client has this long to send its request's headers, and again its body: a slow
    # client is cut off (408) instead of holding a connection.
    request_read_timeout_s: float = 10.0
    # An idle keep-alive connection is closed after this long.
    keepalive_timeout_s: float = 75.0
    # /metrics is served on its own address, never on the public port, unless a token is set.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100
    metrics_token: str = field(default="", repr=False)

    # The app's own psycopg pool, per process. PgBouncer does the real pooling.
    app_pool_min: int = 1
    app_pool_max: int = 4
    # How long a request waits for a pool connection before it answers 503.
    pool_timeout_s: float = 2.0
    # A pool connection is replaced after this long, so connections spread back over
    # PgBouncer instances after one restarted.
    app_pool_max_lifetime_s: float = 600.0
    # GET /api/progress/{id}?wait=S&since=T holds a request until the task changes, for
    # at most this long (wx.request gives up at 60 s).
    progress_wait_max_s: float = 25.0
    # One statement this often checks every waiting task of an API process.
    progress_wait_tick_s: float = 0.25
    # Waiting requests per API process, and per user (0: no limit); beyond them a poll
    # is answered at once.
    progress_waiters_max: int = 20000
    progress_waiters_per_user: int = 10
    # Seconds a client is told to wait in Retry-After when the database is busy or down.
    retry_after_s: int = 2
    # Set on the app's role by `migrate` (PgBouncer does not pass startup options on).
    db_statement_timeout_ms: int = 5000
    db_idle_in_transaction_timeout_ms: int = 10000
    db_lock_timeout_ms: int = 2000

    worker_concurrency: int = 4
    worker_poll_interval_s: float = 0.5
    # Clear of the API's block METRICS_PORT ... METRICS_PORT + API_PROCESSES - 1.
    worker_metrics_port: int = 9200
    lease_s: float = 30.0
    heartbeat_interval_s: float = 5.0
    max_attempts: int = 3
    retry_base_delay_s: float = 2.0
    # On SIGTERM, in-flight stages get this long before tasks are handed back.
    shutdown_grace_s: float = 20.0
    # Retention (every worker's maintenance loop): tasks that finished (completed or
    # failed) more than this many days ago are deleted with their parts ledger rows;
    # 0 keeps them forever. The videos and parts in storage are not deleted: expire them
    # with a bucket lifecycle rule or a cron job on MEDIA_DIR.
    retention_days: int = 30
    # Tasks one retention statement deletes at most; full batches repeat at once.
    retention_batch: int = 500

    duration_min_s: int = 5
    duration_max_s: int = 60
    part_seconds: int = 5
    text_max_chars: int = 100

    # "ffmpeg" renders clips locally; "ark" asks Volcengine Ark (Seedance) for AI clips;
    # "simulated" waits simulated_part_s per part (benchmarks and fault tests).
    video_provider: str = "ffmpeg"
    simulated_part_s: float = 2.0
    # Fault injection for tests and benchmarks, simulated provider only (see
    # service/providers/simulated.py): fail the first N part renders of every task, or
    # every render, with a provider error; and log each rendered part to this file.
    simulated_fail_first: int = 0
    simulated_fail_always: bool = False
    simulated_render_log: str = ""
    video_width: int = 720
    video_height: int = 1280
    video_fps: int = 25
    # Empty: the first CJK font found among the usual system paths.
    video_font_file: str = ""
    # The visible label on every finished video (China's rules for AI-generated content
    # require one); empty: no label.
    video_ai_label: str = "AI生成"
    # Provider "ark": Volcengine Ark's content-generation (video) task API.
    ark_base_url: str = "https://ark.cn-beijing.volces.com/api/v3"
    ark_api_key: str = field(default="", repr=False)
    ark_model: str = "doubao-seedance-1-0-pro-250528"
    ark_resolution: str = "720p"
    ark_ratio: str = "9:16"
    # A part's remote task must succeed within this long, or the attempt is retried.
    ark_part_deadline_s: float = 900.0
    # First wait between polls of a remote task; it grows to 4x with backoff.
    ark_poll_interval_s: float = 5.0
    # Remote tasks one worker has in flight at once (Ark limits concurrency per account).
    ark_max_in_flight: int = 4
    # One HTTP request to Ark (create, poll, clip download) gives up after this long.
    ark_request_timeout_s: float = 60.0

    # "local": MEDIA_DIR, served by the API under /media/; "s3": an S3-compatible bucket.
    storage_backend: str = "local"
    # Empty for AWS; e.g. https://cos.ap-shanghai.myqcloud.com for Tencent COS.
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_bucket: str = ""
    # Prepended to every object key, e.g. "video-tasks/".
    s3_prefix: str = ""
    # A CDN in front of the bucket; empty: progress hands out presigned GET URLs.
    s3_public_base_url: str = ""
    s3_presign_ttl_s: int = 3600
    # "path", "virtual" or "auto" (Tencent COS needs "virtual").
    s3_addressing_style: str = "auto"
    # Objects larger than this are uploaded in parts of this size.
    s3_multipart_threshold_bytes: int = 8 * 1024 * 1024
    # The standard variables; empty: botocore's own chain (instance role, ~/.aws).
    aws_access_key_id: str = field(default="", repr=False)
    aws_secret_access_key: str = field(default="", repr=False)

    # The mini-program's users. WeChat's server APIs (login, later content checks).
    wechat_api_base: str = "https://api.weixin.qq.com"
    # Empty: POST /api/login answers 503 (no WeChat app configured).
    wechat_appid: str = ""
    wechat_secret: str = field(default="", repr=False)
    wechat_timeout_s: float = 5.0
    # Requests must carry `Authorization: Bearer <token>` from POST /api/login. Unset: on in
    # production, off on the local stack (the write-up's unauthenticated curl works).
    auth_required: bool | None = None
    # Behind WeChat Cloud Run: trust the platform's X-WX-OPENID header as the caller.
    auth_trust_wx_openid_header: bool = False
    # Signs the app's own login tokens (HMAC-SHA256, at least 32 bytes); old secrets, comma
    # separated, are still accepted while tokens signed with them live.
    auth_token_secret: str = field(default=LOCAL_AUTH_TOKEN_SECRET, repr=False)
    auth_token_previous_secrets: str = field(default="", repr=False)
    auth_token_ttl_s: int = 259200
    # POST /api/dev-login {"user": ...}: a login token for openid dev:<user> without
    # WeChat, for the demo page at / on the local stack. Unset: on locally without
    # WECHAT_APPID, off otherwise; ENVIRONMENT=production refuses it.
    dev_login: bool | None = None
    # Content safety: product name and theme go through WeChat's msg_sec_check before a
    # task is stored. Unset: on when WECHAT_APPID is set.
    content_check: bool | None = None
    # When WeChat gives no verdict (unreachable, busy, an anonymous caller): accept the
    # text (true) or refuse with 503 (false). Unset: accept locally, refuse in production.
    content_check_fail_open: bool | None = None
    # Fairness, per user (openid, else the client address), decided in the create
    # statement: creates a minute (a burst of as many at once), and tasks not yet
    # finished. 0: no limit.
    user_creates_per_minute: int = 10
    user_max_unfinished: int = 3
    # Subscribe messages ("your video is ready"), sent by the workers from the outbox:
    # the page the message opens ({task_id} is replaced), and the template's fields as
    # key=source pairs (sources: product_name, theme, status, finished_at, task_id,
    # note). The keys are the template's own, from the mini-program's admin console.
    wechat_notice_page: str = "pages/index/index?task_id={task_id}"
    wechat_notice_data: str = "thing1=product_name,phrase2=status,time3=finished_at"
    # formal, trial or developer: which version of the mini-program the message opens.
    wechat_miniprogram_state: str = "formal"
    # A message that WeChat keeps refusing for a transient reason is given up after this.
    notice_max_attempts: int = 5

    media_dir: Path = PROJECT_DIR / ".stack" / "media"
    # Where parts are rendered before merging; must be shared by the workers of one host.
    work_dir: Path = PROJECT_DIR / ".stack" / "work"

    log_level: str = "INFO"

    # The doctor (`python -m service doctor`). Worker processes it counts in the
    # "(API processes + workers) x APP_POOL_MAX vs max_client_conn" arithmetic.
    doctor_expected_workers: int = 1
    # Past one machine (service/capacity.py): API pods of API_PROCESSES each, and the
    # PgBouncer instances they are spread over (the doctor reads one; the others are
    # taken to be configured alike).
    doctor_expected_api_pods: int = 1
    doctor_pooler_instances: int = 1
    # Every doctor step (connect, query, console command) gives up after this long.
    doctor_timeout_s: float = 3.0
    # Sessions idle in a transaction longer than this are reported.
    doctor_idle_in_transaction_s: float = 1.0
    # Running tasks created longer ago than this are reported (the original write-up's 10 minutes).
    doctor_stuck_after_s: float = 600.0
    # The oldest runnable pending task waiting longer than this is a warning.
    doctor_queue_lag_warn_s: float = 60.0
    # Average PgBouncer wait per transaction above this is a warning.
    doctor_wait_warn_ms: float = 100.0

    def __post_init__(self) -> None:
        derived = {
            "database_url": f"postgresql://{LOCAL_APP_USER}@127.0.0.1:{self.pgbouncer_port}/"
                            f"{LOCAL_DB_NAME}",
            "database_direct_url": f"postgresql://{LOCAL_APP_USER}@127.0.0.1:"
                                   f"{self.postgres_port}/{LOCAL_DB_NAME}",
            "database_owner_url": f"postgresql://{LOCAL_OWNER_USER}@127.0.0.1:"
                                  f"{self.postgres_port}/{LOCAL_DB_NAME}",
            "pgbouncer_admin_url": f"postgresql://{LOCAL_ADMIN_USER}@127.0.0.1:"
                                   f"{self.pgbouncer_port}/pgbouncer",
        }
        derived["public_base_url"] = default_public_base_url(self.api_host, self.api_port)
        unset = [name for name in derived if not getattr(self, name)]
        for name in unset:
            object.__setattr__(self, name, derived[name])
        if self.dev_login is None and self.environment in ENVIRONMENTS:
            object.__setattr__(self, "dev_login", _dev_login_default(self))
        if self.environment in ENVIRONMENTS:
            for name, by_environment in ENVIRONMENT_DEFAULTS.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, by_environment[self.environment])
        if self.content_check is None:
            object.__setattr__(self, "content_check", _content_check_default(self))
        problems = _validate(self)
        if self.environment == "production":
            problems += _production_problems(self, unset)
        if problems:
            raise errors.ConfigError("invalid settings: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from upper-case field names: of `environ` alone if given, else
        of the process environment over the .env file (`load_environ`)."""
        environ = load_environ() if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is None or raw == "":
                continue
            convert = _CONVERTERS.get(_type_name(f), str)
            try:
                values[f.name] = convert(raw)
            except ValueError:
                problems.append(f"{f.name.upper()}={raw!r} is not a valid {_type_name(f)}")
        if problems:
            raise errors.ConfigError("invalid settings: " + "; ".join(problems))
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`; a derived public_base_url is derived again."""
        if ("public_base_url" not in changes and self.public_base_url
                == default_public_base_url(self.api_host, self.api_port)):
            changes["public_base_url"] = ""
        # Likewise the settings that follow ENVIRONMENT or WECHAT_APPID (DEV_LOGIN both).
        if "dev_login" not in changes:
            changes["dev_login"] = (None if self.dev_login == _dev_login_default(self)
                                    else self.dev_login)
        for name, by_environment in ENVIRONMENT_DEFAULTS.items():
            if name not in changes and getattr(self, name) == by_environment.get(
                    self.environment):
                changes[name] = None
        if "content_check" not in changes and self.content_check == _content_check_default(
                self):
            changes["content_check"] = None
        return dataclasses.replace(self, **changes)

    def notice_fields(self) -> dict[str, str]:
        """WECHAT_NOTICE_DATA as {template key: source}."""
        return parse_notice_data(self.wechat_notice_data)


    def describe(self) -> dict[str, str]:
        """Settings as strings with passwords hidden, for logs and the doctor."""
        shown = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = "***" if value else ""
            shown[f.name] = redact_url(str(value))
        return shown


def _content_check_default(s: Settings) -> bool:
    return bool(s.wechat_appid) or s.environment == "production"


def _dev_login_default(s: Settings) -> bool:
    # With WeChat configured, logins are WeChat's (and its content check would see a
    # made-up openid).
    return s.environment == "local" and not s.wechat_appid


def default_public_base_url(api_host: str, api_port: int) -> str:
    """http://API_HOST:API_PORT; a wildcard host (0.0.0.0, ::) is reached on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(api_host, api_host)
    return f"http://[{host}]:{api_port}" if ":" in host else f"http://{host}:{api_port}"


def env_file(environ: Mapping[str, str] | None = None, *,
             cwd: Path | None = None) -> Path | None:
    """The .env file the settings are read from, or None (see the module docstring)."""
    environ = os.environ if environ is None else environ
    named = environ.get(ENV_FILE_VARIABLE)
    if named is not None:
        return Path(named).expanduser().resolve() if named else None
    for directory in (cwd or Path.cwd(), PROJECT_DIR):
        candidate = directory / ENV_FILE_NAME
        if candidate.is_file():
            return candidate.resolve()
    return None


def load_environ(environ: Mapping[str, str] | None = None, *,
                 cwd: Path | None = None) -> dict[str, str]:
    """The process environment (`environ`) over the values of the .env file: what every
    entry point reads settings, STACK_DIR and PGBOUNCER_* from.

    One parser (python-dotenv: quotes, `export`, comments); values are literal (no
    ${VAR} expansion). A variable the environment sets, even to "", wins over the file.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, str] = {}
    path = env_file(environ, cwd=cwd)
    if path is not None:
        if not path.is_file():
            raise errors.ConfigError(f"{ENV_FILE_VARIABLE}={path}: no such file")
        for key, value in dotenv.dotenv_values(path, interpolate=False).items():
            if value is None:
                continue
            if key in _PATH_VARIABLES and value and not Path(value).expanduser().is_absolute():
                value = str(path.parent / value)
            merged[key] = value
    merged.update(environ)
    return merged


def parse_notice_data(raw: str) -> dict[str, str]:
    """"thing1=product_name,time3=finished_at" -> {"thing1": "product_name", ...}."""
    pairs: dict[str, str] = {}
    for item in filter(None, (piece.strip() for piece in raw.split(","))):
        key, sep, source = (part.strip() for part in item.partition("="))
        if not sep or not re.fullmatch(r"[a-z_]+[0-9]+", key) or source not in NOTICE_SOURCES:
            raise ValueError(item)
        pairs[key] = source
    return pairs


def redact_url(text: str) -> str:
    """Hide the password in a postgresql:// URL."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1:***@", text)


def _type_name(f: dataclasses.Field[Any]) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


# Variables that name a path: relative in the .env file means relative to its directory.
_PATH_VARIABLES = frozenset({f.name.upper() for f in fields(Settings) if _type_name(f) == "Path"}
                            | {"STACK_DIR", "SIMULATED_RENDER_LOG", "VIDEO_FONT_FILE"})

_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "bool | None": _parse_bool,
    "str": str,
    "Path": lambda raw: Path(raw).expanduser().resolve(),
}


# Passwords of the local stack: a production URL holding one is a copy of the defaults.
LOCAL_PASSWORDS = frozenset(user.split(":", 1)[1] for user in (
    LOCAL_APP_USER, LOCAL_ADMIN_USER, LOCAL_OWNER_USER))


def _production_problems(s: Settings, unset: list[str]) -> list[str]:
    """ENVIRONMENT=production refuses the local stack's defaults, naming what to set."""
    problems = []
    for name in ("database_url", "database_direct_url", "database_owner_url",
                 "pgbouncer_admin_url"):
        password = conninfo_to_dict(getattr(s, name)).get("password")
        if name in unset:
            problems.append(f"ENVIRONMENT=production: set {name.upper()} (it defaults to the "
                            "local stack's)")
        elif password in LOCAL_PASSWORDS:
            problems.append(f"ENVIRONMENT=production: {name.upper()} uses a local stack "
                            "password; set the production one")
    if s.auth_token_secret == LOCAL_AUTH_TOKEN_SECRET:
        problems.append("ENVIRONMENT=production: set AUTH_TOKEN_SECRET (at least 32 random "
                        "bytes; the default is the local stack's)")
    if s.dev_login:
        problems.append("ENVIRONMENT=production: unset DEV_LOGIN (POST /api/dev-login logs "
                        "anyone in without WeChat; it is for the local stack)")
    if "public_base_url" in unset and s.storage_backend == "local":
        problems.append("ENVIRONMENT=production: set PUBLIC_BASE_URL (the https address "
                        "clients reach the videos at)")
    return problems


def _validate(s: Settings) -> list[str]:
    problems = []
    if s.environment not in ENVIRONMENTS:
        problems.append(f"ENVIRONMENT must be one of {', '.join(ENVIRONMENTS)}")
    if s.content_check and not s.wechat_appid:
        problems.append("CONTENT_CHECK needs WECHAT_APPID and WECHAT_SECRET (WeChat's "
                        "msg_sec_check); set them, or CONTENT_CHECK=false")
    if s.user_creates_per_minute < 0 or s.user_max_unfinished < 0:
        problems.append("USER_CREATES_PER_MINUTE and USER_MAX_UNFINISHED must be 0 (no "
                        "limit) or more")
    try:
        parse_notice_data(s.wechat_notice_data)
    except ValueError as exc:
        problems.append(f"WECHAT_NOTICE_DATA: {exc.args[0]!r} is not key=source with a source "
                        f"among {', '.join(NOTICE_SOURCES)}")
    if s.wechat_miniprogram_state not in ("formal", "trial", "developer"):
        problems.append("WECHAT_MINIPROGRAM_STATE must be formal, trial or developer")
    if s.notice_max_attempts < 1:
        problems.append("NOTICE_MAX_ATTEMPTS must be at least 1")
    for name in ("database_url", "database_direct_url", "database_owner_url",
                 "pgbouncer_admin_url"):
        try:
            conninfo_to_dict(getattr(s, name))
        except psycopg.ProgrammingError:
            problems.append(f"{name.upper()} must be a postgresql:// URL or libpq conninfo")
    positive = (
        "doctor_expected_api_pods", "doctor_pooler_instances", "api_port", "api_processes",
        "app_pool_max", "worker_concurrency", "part_seconds",
        "duration_min_s", "max_attempts", "video_width", "video_height", "video_fps",
        "text_max_chars", "request_max_bytes", "retry_after_s",
    )
    for name in positive:
        if getattr(s, name) < 1:
            problems.append(f"{name.upper()} must be at least 1")
    for name in ("pool_timeout_s", "lease_s", "heartbeat_interval_s", "worker_poll_interval_s",
                 "request_read_timeout_s", "keepalive_timeout_s", "progress_wait_max_s",
                 "app_pool_max_lifetime_s",
                 "progress_wait_tick_s"):
        if getattr(s, name) <= 0:
            problems.append(f"{name.upper()} must be positive")
    for name in ("progress_waiters_max", "progress_waiters_per_user"):
        if getattr(s, name) < 0:
            problems.append(f"{name.upper()} must be 0 or more")
    if s.app_pool_min < 0 or s.app_pool_min > s.app_pool_max:
        problems.append("APP_POOL_MIN must be between 0 and APP_POOL_MAX")
    if s.duration_max_s < s.duration_min_s:
        problems.append("DURATION_MAX_S must not be below DURATION_MIN_S")
    if s.heartbeat_interval_s * 2 > s.lease_s:
        problems.append("HEARTBEAT_INTERVAL_S must be at most half of LEASE_S")
    if s.video_provider not in VIDEO_PROVIDERS:
        problems.append(f"VIDEO_PROVIDER must be one of {', '.join(VIDEO_PROVIDERS)}")
    if s.video_provider == "ark":
        for name in ("ark_base_url", "ark_api_key", "ark_model"):
            if not getattr(s, name):
                problems.append(f"{name.upper()} must be set when VIDEO_PROVIDER=ark")
    for name in ("ark_part_deadline_s", "ark_poll_interval_s", "ark_request_timeout_s"):
        if getattr(s, name) <= 0:
            problems.append(f"{name.upper()} must be positive")
    if len(s.auth_token_secret.encode()) < 32:
        problems.append("AUTH_TOKEN_SECRET must be at least 32 bytes")
    if s.auth_token_ttl_s < 60:
        problems.append("AUTH_TOKEN_TTL_S must be at least 60")
    if bool(s.wechat_appid) != bool(s.wechat_secret):
        problems.append("WECHAT_APPID and WECHAT_SECRET are set together")
    if s.retention_days < 0:
        problems.append("RETENTION_DAYS must be 0 (keep forever) or more")
    if s.retention_batch < 1:
        problems.append("RETENTION_BATCH must be at least 1")
    if s.ark_max_in_flight < 1:
        problems.append("ARK_MAX_IN_FLIGHT must be at least 1")
    if s.storage_backend not in STORAGE_BACKENDS:
        problems.append(f"STORAGE_BACKEND must be one of {', '.join(STORAGE_BACKENDS)}")
    if s.storage_backend == "s3" and not s.s3_bucket:
        problems.append("S3_BUCKET must be set when STORAGE_BACKEND=s3")
    if s.s3_addressing_style not in S3_ADDRESSING_STYLES:
        problems.append(f"S3_ADDRESSING_STYLE must be one of {', '.join(S3_ADDRESSING_STYLES)}")
    # SigV4 presigned URLs live at most 7 days.
    if not 1 <= s.s3_presign_ttl_s <= 604800:
        problems.append("S3_PRESIGN_TTL_S must be between 1 and 604800")
    # S3 parts other than the last must be at least 5 MiB.
    if s.s3_multipart_threshold_bytes < 5 * 1024 * 1024:
        problems.append("S3_MULTIPART_THRESHOLD_BYTES must be at least 5242880 (5 MiB)")
    if s.video_width % 2 or s.video_height % 2:
        problems.append("VIDEO_WIDTH and VIDEO_HEIGHT must be even (H.264 4:2:0)")
    return problems
