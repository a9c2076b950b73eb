"""compose.yaml: valid for the Compose specification, and the same stack as `make run`.

There is no Docker engine here. The file is validated with jsonschema against the
Compose specification's own JSON schema, after YAML merge keys are resolved as docker
compose does, then checked for what the stack needs: published ports on loopback that
follow API_PORT/PGBOUNCER_PORT, only variables something reads, and the app's settings
(providers, storage, auth) passed through and valid as compose expands them.

tests/schemas/compose-spec.json is the compose-spec project's schema/compose-spec.json
(Apache-2.0, Copyright The Compose Specification Authors) as shipped unchanged in the
npm package dclint 3.1.0 (schemas/compose.schema.json). To update it: `npm pack dclint`
and copy that file over.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from pgbouncer import render as pgbouncer_render
from service.settings import PROJECT_DIR, Settings

COMPOSE_FILE = PROJECT_DIR / "compose.yaml"
SCHEMA_FILE = PROJECT_DIR / "tests" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    # safe_load resolves `<<: *app` the way docker compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_follows_the_specification(validator, spec):
    errors = [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(spec)
    ]
    assert not errors, "compose.yaml breaks the Compose specification:\n" + "\n".join(errors)


def test_the_schema_is_the_compose_specification(validator):
    assert validator.schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(validator.schema["properties"])


@pytest.mark.parametrize(
    "broken",
    [
        {"services": {"api": {"image": "x", "depends_on": {"db": {"condition": "soon"}}}}},
        {"services": {"api": {"image": "x", "healthcheck": {"tests": ["CMD", "true"]}}}},
        {"services": {"api": {"image": "x", "ports": "8000:8000"}}},
        {"services": {"api": {"image": "x"}}, "volume": {"media": None}},
    ],
    ids=["unknown-condition", "misspelt-key", "ports-not-a-list", "unknown-top-level-key"],
)
def test_the_schema_rejects_an_invalid_file(validator, broken):
    assert not validator.is_valid(broken)


def test_services_of_the_stack(spec):
    assert set(spec["services"]) == {"postgres", "pgbouncer", "migrate", "api", "worker"}


def test_start_order_is_enforced_with_conditions(spec):
    def condition(service: str, dependency: str) -> str:
        return spec["services"][service]["depends_on"][dependency]["condition"]

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("pgbouncer", "migrate") == "service_completed_successfully"
    assert condition("api", "pgbouncer") == "service_healthy"
    assert condition("worker", "pgbouncer") == "service_healthy"


def test_long_running_services_have_healthchecks(spec):
    for name in ("postgres", "pgbouncer", "api"):
        assert spec["services"][name]["healthcheck"]["test"], name


def test_app_talks_to_pgbouncer_and_migrations_go_direct(spec):
    services = spec["services"]
    api_env = services["api"]["environment"]
    assert "@pgbouncer:6432/" in api_env["DATABASE_URL"]
    assert "@postgres:5432/" in services["migrate"]["environment"]["DATABASE_DIRECT_URL"]
    assert services["worker"]["environment"]["DATABASE_URL"] == api_env["DATABASE_URL"]


def test_pgbouncer_is_built_from_the_same_templates(spec):
    pgbouncer = spec["services"]["pgbouncer"]
    assert pgbouncer["build"] == "./pgbouncer"
    dockerfile = (PROJECT_DIR / "pgbouncer" / "Dockerfile").read_text()
    for name in ("render.py", "pgbouncer.ini.template", "userlist.txt.template"):
        assert name in dockerfile
        assert (PROJECT_DIR / "pgbouncer" / name).exists()
    # SIGINT is PgBouncer's safe shutdown on 1.18 and on newer releases.
    assert pgbouncer["stop_signal"] == "SIGINT"


def test_api_and_worker_share_the_media_volume(spec):
    def targets(service: str) -> set[str]:
        return {volume.split(":")[1] for volume in spec["services"][service]["volumes"]}

    assert "/data/media" in targets("api") & targets("worker")


# Variables compose.yaml may name besides the settings: the local stack's passwords and
# PgBouncer's own settings (pgbouncer/render.py reads PGBOUNCER_*).
COMPOSE_ONLY_VARIABLES = {"APP_DB_PASSWORD", "OWNER_DB_PASSWORD", "POSTGRES_PASSWORD",
                          "POSTGRES_PORT", "PGBOUNCER_PORT"}
# Read by ops.provision in the migrate service, not by Settings.
PROVISION_VARIABLES = {"POSTGRES_SUPERUSER_URL", "PGBOUNCER_AUTH_PASSWORD"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-)?")


def settings_names() -> set[str]:
    return {f.name.upper() for f in dataclasses.fields(Settings)}


def interpolate(value: str, environ: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default} and nested defaults, as docker compose expands them."""
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^${}]|\$\{[^}]*\})*))?\}")
    while True:
        expanded = pattern.sub(lambda m: environ.get(m.group(1)) or interpolate(
            m.group(2) or "", environ), value)
        if expanded == value:
            return expanded
        value = expanded


def test_published_ports_listen_on_loopback_and_follow_the_port_settings(spec):
    published = {name: service.get("ports", []) for name, service in spec["services"].items()}
    assert published["api"] == ["127.0.0.1:${API_PORT:-8000}:8000"]
    assert published["pgbouncer"] == ["127.0.0.1:${PGBOUNCER_PORT:-6432}:6432"]
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert interpolate(published["api"][0], {"API_PORT": "8001"}) == "127.0.0.1:8001:8000"
    assert interpolate(published["api"][0], {}) == "127.0.0.1:8000:8000"
    # The URL clients are handed follows the published port.
    base = spec["services"]["api"]["environment"]["PUBLIC_BASE_URL"]
    assert interpolate(base, {"API_PORT": "8001"}) == "http://127.0.0.1:8001"
    assert interpolate(base, {"PUBLIC_BASE_URL": "https://v.example"}) == "https://v.example"


def test_every_variable_is_a_setting_or_the_stacks_own():
    names = set(_VARIABLE.findall(COMPOSE_FILE.read_text()))
    pgbouncer_names = {f"PGBOUNCER_{name.upper()}" for name in pgbouncer_render.SETTINGS}
    unknown = names - settings_names() - pgbouncer_names - COMPOSE_ONLY_VARIABLES
    assert not unknown, f"compose.yaml names variables nothing reads: {sorted(unknown)}"


def test_app_environment_names_only_settings(spec):
    for name in ("api", "worker", "migrate"):
        environment = set(spec["services"][name]["environment"])
        unknown = environment - settings_names() - PROVISION_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"


def test_providers_storage_and_auth_pass_through(spec):
    passed = {"ENVIRONMENT", "VIDEO_PROVIDER", "ARK_API_KEY", "STORAGE_BACKEND", "S3_BUCKET",
              "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AUTH_REQUIRED",
              "AUTH_TOKEN_SECRET", "WECHAT_APPID", "WECHAT_SECRET", "CONTENT_CHECK"}
    for name in ("api", "worker"):
        environment = spec["services"][name]["environment"]
        assert passed <= set(environment), sorted(passed - set(environment))
        for key in passed:
            # Empty unless .env or the shell sets it: the setting's own default.
            assert environment[key] == f"${{{key}:-}}", (name, key)


@pytest.mark.parametrize("environ", [
    {},
    {"VIDEO_PROVIDER": "ark", "ARK_API_KEY": "k", "STORAGE_BACKEND": "s3", "S3_BUCKET": "videos",
     "AUTH_REQUIRED": "true", "API_PORT": "8001"},
], ids=["defaults", "ark-s3-auth"])
def test_the_apps_settings_as_compose_expands_them_are_valid(spec, environ):
    for name in ("api", "worker", "migrate"):
        expanded = {key: interpolate(str(value), environ)
                    for key, value in spec["services"][name]["environment"].items()}
        settings = Settings.from_env(expanded)
        assert settings.api_host == "0.0.0.0" or name == "migrate"
        if environ and name != "migrate":
            assert (settings.video_provider, settings.storage_backend) == ("ark", "s3")
            assert settings.auth_required is True
