"""compose.yaml: valid for the Compose specification, and the same stack as `make run`.

There is no Docker engine here. The file is validated with jsonschema against the
Compose specification's own JSON schema, after YAML merge keys are resolved as docker
compose does, then checked for what the stack needs.

tests/schemas/compose-spec.json is the compose-spec project's schema/compose-spec.json
(Apache-2.0, Copyright The Compose Specification Authors) as shipped unchanged in the
npm package dclint 3.1.0 (schemas/compose.schema.json). To update it: `npm pack dclint`
and copy that file over.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from service.settings import PROJECT_DIR

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
