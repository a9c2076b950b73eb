"""compose.yaml: valid for the compose specification, and the same stack as `make run`.

There is no Docker engine here; the file is checked with a compose-spec parser (after
YAML merge keys are resolved, as docker compose does) and for what the stack needs.
"""

from __future__ import annotations

import json

import pytest
import yaml
from compose_spec import PyCompose

from service.settings import PROJECT_DIR

COMPOSE_FILE = PROJECT_DIR / "compose.yaml"


@pytest.fixture(scope="module")
def spec():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return PyCompose.from_json(json.dumps(raw)).to_spec()


def test_the_parser_rejects_an_invalid_file():
    broken = {"services": {"api": {"image": "x", "depends_on": {"db": {"condition": "soon"}}}}}
    with pytest.raises(ValueError):
        PyCompose.from_json(json.dumps(broken)).to_spec()


def test_services_of_the_stack(spec):
    assert set(spec.services) == {"postgres", "pgbouncer", "migrate", "api", "worker"}


def test_start_order_is_enforced_with_conditions(spec):
    def condition(service: str, dependency: str) -> str:
        return spec.services[service].depends_on[dependency].condition.value

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("pgbouncer", "migrate") == "service_completed_successfully"
    assert condition("api", "pgbouncer") == "service_healthy"
    assert condition("worker", "pgbouncer") == "service_healthy"


def test_long_running_services_have_healthchecks(spec):
    for name in ("postgres", "pgbouncer", "api"):
        assert spec.services[name].healthcheck.test, name


def test_app_talks_to_pgbouncer_and_migrations_go_direct(spec):
    api_env = spec.services["api"].environment
    assert "@pgbouncer:6432/" in api_env["DATABASE_URL"]
    assert "@postgres:5432/" in spec.services["migrate"].environment["DATABASE_DIRECT_URL"]
    assert spec.services["worker"].environment["DATABASE_URL"] == api_env["DATABASE_URL"]


def test_pgbouncer_is_built_from_the_same_templates(spec):
    assert spec.services["pgbouncer"].build == "./pgbouncer"
    dockerfile = (PROJECT_DIR / "pgbouncer" / "Dockerfile").read_text()
    for name in ("render.py", "pgbouncer.ini.template", "userlist.txt.template"):
        assert name in dockerfile
        assert (PROJECT_DIR / "pgbouncer" / name).exists()
    # SIGINT is PgBouncer's safe shutdown on 1.18 and on newer releases.
    assert spec.services["pgbouncer"].stop_signal == "SIGINT"


def test_api_and_worker_share_the_media_volume(spec):
    def targets(service: str) -> set[str]:
        return {volume.split(":")[1] for volume in spec.services[service].volumes}

    assert "/data/media" in targets("api") & targets("worker")
