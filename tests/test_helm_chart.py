"""ops/helm/video-tasks: rendered offline, every object valid, the arithmetic enforced.

No cluster and no download: Helm's own Go SDK (v4, bundled in the helm-python-sdk wheel)
renders the chart and applies values.schema.json as `helm install` does; the core objects
are validated with kubernetes-validate's bundled Kubernetes JSON schemas (strict: unknown
fields are errors) for the oldest Kubernetes the chart supports and the newest bundled;
the CloudNativePG, KEDA and prometheus-operator objects against their CRD schemas
vendored in tests/schemas/crds (README there: source and version), closed the same way.

The connection arithmetic is checked twice over: the chart's `fail`
(templates/_capacity.tpl) against service.capacity, the rule the doctor uses, on a grid
of values, each refusing the same values with the same numbers.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator
from psycopg.conninfo import conninfo_to_dict

from service import capacity
from service.api import server
from service.settings import PROJECT_DIR, SECRET_FIELDS, Settings
from service.worker import runner

helm = pytest.importorskip("helm_python", reason="helm-python-sdk has no wheel here")

CHART_DIR = PROJECT_DIR / "ops" / "helm" / "video-tasks"
CRD_DIR = PROJECT_DIR / "tests" / "schemas" / "crds"
RELEASE, NAMESPACE = "vt", "prod"
FULLNAME = "vt-video-tasks"
# The two values without a default (values.yaml says so).
REQUIRED: dict[str, Any] = {"storage": {"s3": {"bucket": "videos"}},
                            "wechat": {"appid": "wx0123456789abcdef"}}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest bundled.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2"}
# What the pods' Secrets hold, for building their environment (service/settings.py reads it).
APP_SECRET = {"AUTH_TOKEN_SECRET": "s" * 48, "WECHAT_SECRET": "wechat-secret",
              "AWS_ACCESS_KEY_ID": "AKIA0000", "AWS_SECRET_ACCESS_KEY": "aws-secret"}
EXTERNAL: dict[str, Any] = {"database": {"mode": "external", "external": {
    "url": "postgresql://app@pgbouncer.db.svc:6432/videotasks?sslmode=require",
    "directUrl": "postgresql://app@postgres.db.svc:5433/videotasks?sslmode=require",
    "ownerUrl": "postgresql://videotasks_owner@postgres.db.svc:5433/videotasks",
    "adminUrl": "postgresql://pgbouncer_admin@pgbouncer.db.svc:6432/pgbouncer",
    "appPasswordSecret": {"name": "db-app", "key": "password"},
    "ownerPasswordSecret": {"name": "db-owner", "key": "password"}}}}


def merged(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def values(*overrides: dict[str, Any]) -> dict[str, Any]:
    return merged(REQUIRED, *overrides)


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


class Rendered:
    """The manifests of one render: objects by kind and name, and NOTES.txt."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = manifests.pop("video-tasks/templates/NOTES.txt", "")
        self.objects = [doc for text in manifests.values() for doc in yaml.safe_load_all(text)
                        if doc]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found in {self.kinds()}"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def config(self) -> dict[str, str]:
        return self.get("ConfigMap", FULLNAME)["data"]

    def pod_specs(self) -> dict[str, dict[str, Any]]:
        specs = {o["metadata"]["name"]: o["spec"]["template"]["spec"]
                 for o in self.objects if o["kind"] in ("Deployment", "Job")}
        specs |= {o["metadata"]["name"]: o["spec"] for o in self.all("Pod")}
        return specs


def render(chart: Any, vals: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(vals, name=RELEASE, namespace=NAMESPACE, is_install=True))


@pytest.fixture(scope="module")
def default(chart: Any) -> Rendered:
    return render(chart, values())


@pytest.fixture(scope="module")
def external(chart: Any) -> Rendered:
    return render(chart, values(EXTERNAL))


# --- validation of every object ----------------------------------------------------------


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl --validate=strict` would."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: closed(sub) for name, sub in out["properties"].items()}
        if ("additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [closed(sub) for sub in out[key]]
    return out


@cache
def crd_validator(api_version: str, kind: str) -> Draft7Validator:
    group, version = api_version.split("/")
    path = CRD_DIR / f"{group}_{kind.lower()}_{version}.json"
    assert path.exists(), f"no vendored schema for {api_version} {kind} ({path.name})"
    schema = closed(json.loads(path.read_text()))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def problems(obj: dict[str, Any]) -> list[str]:
    """Why `obj` is invalid: nothing when its schema accepts it."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj["apiVersion"] in CORE_GROUPS:
        found = []
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                found.append(f"{where} (Kubernetes {version}): {exc.message} at "
                             f"{'/'.join(map(str, exc.absolute_path))}")
        return found
    return [f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}"
            for e in crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj)]


VALUE_SETS = {
    "defaults": {},
    "external-database": EXTERNAL,
    "no-autoscalers": {"api": {"autoscaling": {"enabled": False}},
                       "worker": {"keda": {"enabled": False}}},
    "service-monitor-two-processes": {"metrics": {"serviceMonitor": {"enabled": True}},
                                      "api": {"processes": 2}},
    "ark-s3-cdn": {"videoProvider": "ark", "config": {"ARK_MODEL": "doubao-x"},
                   "storage": {"s3": {"endpointUrl": "https://cos.ap-shanghai.myqcloud.com",
                                      "addressingStyle": "virtual",
                                      "publicBaseUrl": "https://cdn.example.com"}},
                   "database": {"cloudnativepg": {"appSecret": "my-app", "ownerSecret": "my-owner",
                                                  "enablePodMonitor": True}}},
    "keda-read-only-role": {"worker": {"keda": {"auth": {
        "userName": "keda_reader", "passwordSecret": {"name": "keda-reader", "key": "pw"}}}}},
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_object_is_valid(chart, name):
    rendered = render(chart, values(VALUE_SETS[name]))
    found = [problem for obj in rendered.objects for problem in problems(obj)]
    assert not found, "\n".join(found)
    for obj in rendered.objects:
        # Names become DNS names (Services, the Pooler's Service): RFC 1035 labels.
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", obj["metadata"]["name"]), obj
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_the_validators_refuse_broken_objects(default):
    deployment = copy.deepcopy(default.get("Deployment", f"{FULLNAME}-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    pooler = copy.deepcopy(default.get("Pooler", f"{FULLNAME}-db-pooler-rw"))
    pooler["spec"]["pgbouncer"]["poolMode"] = "statement"
    scaled = copy.deepcopy(default.get("ScaledObject", f"{FULLNAME}-worker"))
    scaled["spec"]["maxReplicas"] = 3  # KEDA spells it maxReplicaCount
    cluster = copy.deepcopy(default.get("Cluster", f"{FULLNAME}-db"))
    cluster["spec"]["instances"] = 0
    for obj, expected in ((deployment, "imagePullPolicyy"), (pooler, "statement"),
                          (scaled, "maxReplicas"), (cluster, "less than the minimum")):
        assert any(expected in p for p in problems(obj)), (obj["kind"], problems(obj))


def test_the_vendored_schemas_are_the_ones_the_readme_names():
    readme = (CRD_DIR / "README.md").read_text()
    vendored = sorted(p.name for p in CRD_DIR.glob("*.json"))
    assert vendored == sorted(re.findall(r"`([\w.]+_v\w+\.json)`", readme))
    for tag in ("v1.30.0", "v2.20.2", "v0.93.0"):
        assert tag in readme


def test_helm_lint_finds_nothing():
    report = helm.lint(CHART_DIR, values(), strict=True)
    assert not report["errors"], report
    # Severity 2 and 3 are warnings and errors; 1 is "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


# --- the settings the processes get ------------------------------------------------------


def environment(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it, with made-up secret values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= rendered.config()
        else:
            env |= APP_SECRET
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "secret-from-" + json.dumps(
            item.get("valueFrom", {}), sort_keys=True))
    return env


@pytest.mark.parametrize("name", ["defaults", "external-database", "ark-s3-cdn"])
def test_every_process_gets_valid_production_settings(chart, name):
    vals = values(VALUE_SETS[name])
    if vals.get("videoProvider") == "ark":
        APP_SECRET["ARK_API_KEY"] = "ark-key"
    try:
        rendered = render(chart, vals)
        for pod, spec in rendered.pod_specs().items():
            if pod.endswith("test-ready"):
                continue
            (container,) = spec["containers"]
            settings = Settings.from_env(environment(rendered, container))  # no ConfigError
            assert settings.environment == "production", pod
            assert settings.auth_required is True and settings.content_check is True, pod
            assert (settings.storage_backend, settings.s3_bucket) == ("s3", "videos"), pod
            assert str(settings.work_dir) == "/data/work", pod
    finally:
        APP_SECRET.pop("ARK_API_KEY", None)


def test_no_secret_in_the_settings_or_the_values(default, external):
    for rendered in (default, external):
        config = rendered.config()
        assert not {name.upper() for name in SECRET_FIELDS} & set(config)
        assert "PGPASSWORD" not in config
        for name in ("DATABASE_URL", "DATABASE_DIRECT_URL", "DATABASE_OWNER_URL",
                     "PGBOUNCER_ADMIN_URL"):
            assert "password" not in conninfo_to_dict(config[name]), name
    text = (CHART_DIR / "values.yaml").read_text()
    assert not re.search(r"://[^/@\s:]+:[^@\s]+@", text)
    defaults = yaml.safe_load(text)
    assert defaults["secrets"]["app"]["name"] == ""  # a name, never the secret


def test_api_and_workers_get_the_app_role_and_only_migrate_the_owner(default, external):
    for rendered, app, owner in ((default, f"{FULLNAME}-db-app", f"{FULLNAME}-db-owner"),
                                 (external, "db-app", "db-owner")):
        for pod, spec in rendered.pod_specs().items():
            for container in spec["containers"]:
                passwords = [e["valueFrom"]["secretKeyRef"]["name"]
                             for e in container.get("env", []) if e["name"] == "PGPASSWORD"]
                if pod.endswith("-migrate"):
                    assert passwords == [owner]
                elif not pod.endswith("test-ready"):
                    assert passwords == [app], pod


def test_the_migrate_job_has_the_same_settings_inline(default):
    job = default.get("Job", f"{FULLNAME}-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    inline = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert {k: v for k, v in inline.items() if k in default.config()} == default.config()


# --- security and resources --------------------------------------------------------------


def test_pods_run_as_non_root_on_a_read_only_root_with_limits(default):
    for pod, spec in default.pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, pod
        assert spec["securityContext"]["runAsUser"] == 10001, pod  # the Dockerfile's user
        assert spec["automountServiceAccountToken"] is False, pod
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, pod
            assert security["allowPrivilegeEscalation"] is False, pod
            assert security["capabilities"]["drop"] == ["ALL"], pod
            assert {"requests", "limits"} <= set(container["resources"]), pod
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, pod
    worker = default.pod_specs()[f"{FULLNAME}-worker"]
    assert "/data/work" in {m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    assert default.config()["WORK_DIR"] == "/data/work"
    assert default.config()["XDG_CACHE_HOME"].startswith("/tmp/")


def test_production_settings_of_the_release(chart, default):
    config = default.config()
    assert config["ENVIRONMENT"] == "production"
    assert config["STORAGE_BACKEND"] == "s3" and config["S3_BUCKET"] == "videos"
    assert config["CONTENT_CHECK"] == "true"
    # Every connection is encrypted; none names a password.
    for name in ("DATABASE_URL", "DATABASE_DIRECT_URL", "DATABASE_OWNER_URL"):
        assert conninfo_to_dict(config[name])["sslmode"] == "require", name
    # The doctor run in a pod checks the release's own arithmetic: its pods and poolers.
    plan = plan_of(chart, values())
    assert (config["DOCTOR_EXPECTED_API_PODS"], config["DOCTOR_EXPECTED_WORKERS"],
            config["DOCTOR_POOLER_INSTANCES"]) == (
        str(plan.api_pods), str(plan.worker_pods), str(plan.pooler_instances))


# --- stopping ----------------------------------------------------------------------------


@pytest.mark.parametrize("grace_s", [20, 45.5, 300])
def test_termination_grace_outlasts_the_workers_shutdown(chart, grace_s):
    rendered = render(chart, values({"worker": {"shutdownGraceSeconds": grace_s}}))
    spec = rendered.pod_specs()[f"{FULLNAME}-worker"]
    # Stages get the grace, the cancelled ones RELEASE_TIMEOUT_S + 1 to hand back, the
    # notifier RELEASE_TIMEOUT_S (service/worker/runner.py), then the pool closes.
    needed = grace_s + 2 * runner.RELEASE_TIMEOUT_S + 1
    assert spec["terminationGracePeriodSeconds"] > needed
    assert rendered.config()["SHUTDOWN_GRACE_S"] == str(grace_s)
    assert spec["containers"][0]["command"] == ["python", "-m", "service", "worker"]


def test_the_api_drains_before_it_is_killed(default):
    spec = default.pod_specs()[f"{FULLNAME}-api"]
    (api,) = spec["containers"]
    sleep_s = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep_s >= 1
    # After the sleep, SIGTERM: aiohttp drains within SHUTDOWN_TIMEOUT_S, the supervisor
    # kills what is left at KILL_AFTER_S; Kubernetes must wait longer than both.
    assert server.SHUTDOWN_TIMEOUT_S < server.KILL_AFTER_S
    assert spec["terminationGracePeriodSeconds"] > sleep_s + server.KILL_AFTER_S
    # Exec form, no shell: python is PID 1 and receives SIGTERM itself.
    assert api["command"] == ["python", "-m", "service", "api"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    deployment = default.get("Deployment", f"{FULLNAME}-api")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_each_deployment_has_a_disruption_budget(default):
    budgets = {p["metadata"]["name"]: p["spec"] for p in default.all("PodDisruptionBudget")}
    for deployment in default.all("Deployment"):
        name = deployment["metadata"]["name"]
        assert budgets[name]["selector"] == deployment["spec"]["selector"], name


# --- scaling -----------------------------------------------------------------------------


def test_the_api_scales_on_cpu_and_the_worker_on_the_queue_alone(default):
    (hpa,) = default.all("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # KEDA owns the worker's HPA; no second one, and no fixed replica count to fight it.
    assert "replicas" not in default.get("Deployment", f"{FULLNAME}-worker")["spec"]
    assert "replicas" not in default.get("Deployment", f"{FULLNAME}-api")["spec"]
    scaled = default.get("ScaledObject", f"{FULLNAME}-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    assert trigger["metadata"]["targetQueryValue"] == "4"  # worker.keda.tasksPerWorker
    # Straight to PostgreSQL (the scaler's prepared statements), not the pooler.
    assert trigger["metadata"]["host"] == f"{FULLNAME}-db-rw.{NAMESPACE}.svc"
    assert trigger["metadata"]["port"] == "5432"
    auth = default.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": f"{FULLNAME}-db-app", "key": "password"}]


def test_tasks_per_worker_is_a_value(chart):
    rendered = render(chart, values({"worker": {"keda": {"tasksPerWorker": 2,
                                                         "activationTasks": 1}}}))
    (trigger,) = rendered.get("ScaledObject", f"{FULLNAME}-worker")["spec"]["triggers"]
    assert (trigger["metadata"]["targetQueryValue"],
            trigger["metadata"]["activationTargetQueryValue"]) == ("2", "1")


def test_keda_through_a_connection_string_or_a_read_only_role(chart, external):
    rendered = render(chart, values({"worker": {"keda": {"auth": {"connectionSecret": {
        "name": "keda-dsn", "key": "dsn"}}}}}))
    (trigger,) = rendered.get("ScaledObject", f"{FULLNAME}-worker")["spec"]["triggers"]
    assert "host" not in trigger["metadata"]
    auth = rendered.get("TriggerAuthentication", f"{FULLNAME}-worker")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "keda-dsn", "key": "dsn"}]
    # External: host, port and database from the direct URL.
    (trigger,) = external.get("ScaledObject", f"{FULLNAME}-worker")["spec"]["triggers"]
    assert {k: trigger["metadata"][k] for k in ("host", "port", "dbName", "userName")} == {
        "host": "postgres.db.svc", "port": "5433", "dbName": "videotasks", "userName": "app"}


def test_the_keda_query_counts_through_the_partial_indexes(default, direct):
    (trigger,) = default.get("ScaledObject", f"{FULLNAME}-worker")["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert direct.execute(query).fetchone()[0] == 0  # one number, as KEDA needs
    with direct.transaction(force_rollback=True):
        direct.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in direct.execute("EXPLAIN " + query))
    assert "Seq Scan" not in plan, plan
    for index in ("claim_idx", "lease_idx"):
        assert f"video_generation_tasks_{index}" in plan, plan


# --- the database ------------------------------------------------------------------------


def test_the_pooler_runs_transaction_mode_with_the_values_parameters(chart):
    rendered = render(chart, values({"database": {"pooler": {
        "instances": 3, "defaultPoolSize": 12, "reservePoolSize": 3, "maxClientConn": 900,
        "maxDbConnections": 14, "parameters": {"query_wait_timeout": 7}}}}))
    pooler = rendered.get("Pooler", f"{FULLNAME}-db-pooler-rw")
    spec = pooler["spec"]
    assert (spec["type"], spec["pgbouncer"]["poolMode"], spec["instances"]) == (
        "rw", "transaction", 3)
    assert spec["cluster"]["name"] == f"{FULLNAME}-db" != pooler["metadata"]["name"]
    assert spec["pgbouncer"]["parameters"] == {
        "default_pool_size": "12", "reserve_pool_size": "3", "max_client_conn": "900",
        "max_db_connections": "14", "query_wait_timeout": "7", "idle_transaction_timeout": "30",
        "server_idle_timeout": "60", "server_lifetime": "3600"}
    # The app connects to the Service named like the Pooler, on PgBouncer's port 5432.
    url = conninfo_to_dict(rendered.config()["DATABASE_URL"])
    assert (url["host"], url["port"]) == (f"{pooler['metadata']['name']}.{NAMESPACE}.svc", "5432")


def test_the_cluster_has_the_roles_and_the_limits_of_the_values(chart):
    rendered = render(chart, values({"database": {"postgres": {
        "maxConnections": 300, "reservedConnections": 2}}}))
    cluster = rendered.get("Cluster", f"{FULLNAME}-db")["spec"]
    assert cluster["postgresql"]["parameters"] == {
        "max_connections": "300", "superuser_reserved_connections": "3",
        "reserved_connections": "2"}
    assert cluster["enableSuperuserAccess"] is False
    assert cluster["bootstrap"]["initdb"] == {
        "database": "videotasks", "owner": "videotasks_owner",
        "secret": {"name": f"{FULLNAME}-db-owner"}}
    (role,) = cluster["managed"]["roles"]
    assert (role["name"], role["login"], role["superuser"]) == ("app", True, False)
    secrets = {s["metadata"]["name"]: s for s in rendered.all("Secret")}
    for name, user in ((f"{FULLNAME}-db-app", "app"), (f"{FULLNAME}-db-owner",
                                                       "videotasks_owner")):
        assert secrets[name]["type"] == "kubernetes.io/basic-auth"
        assert secrets[name]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert len(secrets[name]["data"]["password"]) >= 40
        assert base64.b64decode(secrets[name]["data"]["username"]).decode() == user


def test_an_existing_database_renders_no_cluster_or_pooler(external):
    kinds = external.kinds()
    assert "Cluster" not in kinds and "Pooler" not in kinds
    assert "Secret" not in kinds  # the passwords are the operator's own Secrets
    config = external.config()
    database = EXTERNAL["database"]["external"]
    assert (config["DATABASE_URL"], config["DATABASE_DIRECT_URL"],
            config["DATABASE_OWNER_URL"], config["PGBOUNCER_ADMIN_URL"]) == (
        database["url"], database["directUrl"], database["ownerUrl"], database["adminUrl"])


def test_migrations_run_as_a_hook_before_the_new_pods(default, external):
    for rendered, install in ((external, "pre-install"), (default, "post-install")):
        job = rendered.get("Job", f"{FULLNAME}-migrate")
        annotations = job["metadata"]["annotations"]
        # A database the chart creates does not exist before install: post-install then.
        assert annotations["helm.sh/hook"] == f"{install},pre-upgrade"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
        spec = job["spec"]["template"]["spec"]
        assert spec["containers"][0]["command"] == ["python", "-m", "service", "migrate"]
        # Hooks run before the release's ConfigMap and ServiceAccount exist.
        assert "serviceAccountName" not in spec
        assert not any("configMapRef" in s for s in spec["containers"][0]["envFrom"])
        assert job["spec"]["backoffLimit"] >= 1


# --- values.schema.json and the template's own checks ----------------------------------


@pytest.mark.parametrize(("override", "expected"), [
    ({"api": {"replicaz": 3}}, "additional properties 'replicaz'"),
    ({"api": {"processes": "2"}}, "/api/processes"),
    ({"worker": {"keda": {"tasksPerWorker": 0}}}, "/worker/keda/tasksPerWorker"),
    ({"config": {"APP_POOL_MAX": "9"}}, "APP_POOL_MAX"),
    ({"config": {"AUTH_TOKEN_SECRET": "in-values"}}, "AUTH_TOKEN_SECRET"),
    ({"database": {"pooler": {"parameters": {"pool_mode": "session"}}}}, "pool_mode"),
    ({"database": {"pooler": {"parameters": {"default_pool_size": "50"}}}}, "default_pool_size"),
    ({"database": {"mode": "cloudpg"}}, "/database/mode"),
    ({"database": {"mode": "external", "external": {
        "url": "postgresql://app:hunter2@pgbouncer:6432/videotasks"}}}, "/database/external"),
    ({"database": {"mode": "external"}}, "external"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    ({"environment": "local"}, "/environment"),
    ({"storage": {"s3": {"bucket": ""}}}, "/storage/s3/bucket"),
    ({"wechat": {"appid": ""}}, "/wechat/appid"),
], ids=["misspelt-key", "string-for-integer", "zero-tasks-per-worker", "chart-set-setting",
        "secret-in-values", "pool-mode-parameter", "arithmetic-parameter", "unknown-mode",
        "password-in-url", "external-without-urls", "root", "local-mode", "no-bucket",
        "content-check-without-appid"])
def test_wrong_values_fail_at_install(chart, override, expected):
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values(override), name=RELEASE, namespace=NAMESPACE)
    assert expected in str(caught.value)


def test_content_check_may_be_turned_off_without_an_appid(chart):
    rendered = render(chart, values({"wechat": {"appid": ""}, "contentCheck": False}))
    assert rendered.config()["CONTENT_CHECK"] == "false"


@pytest.mark.parametrize(("override", "expected"), [
    ({"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, "maxReplicas must not"),
    ({"appPool": {"min": 5, "max": 4}}, "appPool.min must not exceed"),
    ({"api": {"port": 9101, "processes": 2}}, "api.port 9101 is among"),
    ({"database": {"pooler": {"maxDbConnections": 5}}}, "maxDbConnections must be 0 or"),
])
def test_values_that_contradict_each_other_fail_naming_the_fix(chart, override, expected):
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values(override), name=RELEASE, namespace=NAMESPACE)
    assert expected in str(caught.value)


def plan_of(chart: Any, vals: dict[str, Any]) -> capacity.Plan:
    """service.capacity's Plan for the values, as the chart reads them."""
    v = merged(chart_defaults(chart), vals)
    api, worker, db = v["api"], v["worker"], v["database"]
    api_most = api["autoscaling"]["maxReplicas"] if api["autoscaling"]["enabled"] else (
        api["replicas"])
    worker_most = (worker["keda"]["maxReplicaCount"] if worker["keda"]["enabled"]
                   else worker["replicas"])
    pooler, postgres = db["pooler"], db["postgres"]
    return capacity.Plan(
        api_pods=int(api_most + api["maxSurge"]), api_processes=int(api["processes"]),
        worker_pods=int(worker_most + worker["maxSurge"]), app_pool_max=int(v["appPool"]["max"]),
        pooler_instances=int(pooler["instances"]), max_client_conn=int(pooler["maxClientConn"]),
        default_pool_size=int(pooler["defaultPoolSize"]),
        reserve_pool_size=int(pooler["reservePoolSize"]),
        max_db_connections=int(pooler["maxDbConnections"]),
        max_connections=int(postgres["maxConnections"]),
        reserved_connections=int(postgres["superuserReservedConnections"]
                                 + postgres["reservedConnections"]),
        other_connections=int(db["otherConnections"]))


@cache
def _defaults(chart: Any) -> str:
    return json.dumps(chart.values)


def chart_defaults(chart: Any) -> dict[str, Any]:
    """values.yaml, as Helm merges the given values over it (maps key by key)."""
    return json.loads(_defaults(chart))


def grid() -> Iterator[dict[str, Any]]:
    """Values around the limits: pods, processes, pools, poolers, PostgreSQL."""
    axes = itertools.product([3, 20], [1, 3], [5, 50], [2, 8], [1, 3], [60, 250], [10, 30],
                             [0, 32], [100, 150])
    for i, (api_max, processes, workers, pool, poolers, mcc, dps, mdc, max_conn) in enumerate(
            axes):
        # Autoscalers on (their maximum counts) or off (the fixed replica count does).
        scalers = i % 2 == 0
        yield {"api": {"processes": processes, "replicas": api_max,
                       "autoscaling": {"enabled": scalers, "maxReplicas": api_max}},
               "worker": {"replicas": workers,
                          "keda": {"enabled": scalers, "maxReplicaCount": workers}},
               "appPool": {"max": pool},
               "database": {"pooler": {"instances": poolers, "maxClientConn": mcc,
                                       "defaultPoolSize": dps, "maxDbConnections": mdc},
                            "postgres": {"maxConnections": max_conn}}}


def boundaries(chart: Any) -> Iterator[dict[str, Any]]:
    """Values exactly at each bound, and one over it."""
    for vals in itertools.islice(grid(), 0, None, 37):
        plan = plan_of(chart, values(vals))
        for mcc in (plan.clients_per_pooler, plan.clients_per_pooler - 1):
            for usable in (plan.servers, plan.servers - 1):
                max_conn = usable + plan.reserved_connections
                if mcc >= 1 and max_conn >= 1:
                    yield merged(vals, {"database": {"pooler": {"maxClientConn": mcc},
                                                     "postgres": {"maxConnections": max_conn}}})


def test_the_template_rule_is_the_python_rule(chart):
    checked = refused = 0
    disagreements = []
    for vals in itertools.chain(grid(), boundaries(chart)):
        vals = values(vals)
        plan = plan_of(chart, vals)
        try:
            manifests = chart.render(vals, name=RELEASE, namespace=NAMESPACE)
            config = yaml.safe_load(manifests["video-tasks/templates/configmap.yaml"])
        except helm.HelmRenderError as exc:
            message, config = str(exc), None
        checked += 1
        if plan.problems():
            refused += 1
            expected = [part for part, problem in (
                (plan.client_arithmetic(), plan.client_problem()),
                (plan.server_arithmetic(), plan.server_problem())) if problem]
            if config is not None or not all(part in message for part in expected):
                disagreements.append((vals, plan.problems(), config and "rendered"))
        else:
            annotations = config["metadata"]["annotations"] if config else {}
            if annotations.get("video-tasks/client-connections-per-pooler") != (
                    f"{plan.clients_per_pooler} of max_client_conn {plan.max_client_conn}") or (
                    annotations.get("video-tasks/server-connections")
                    != f"{plan.servers} of {plan.usable} usable"):
                disagreements.append((vals, "fits in Python", annotations or message))
    assert not disagreements, f"{len(disagreements)} of {checked}: {disagreements[:3]}"
    # The grid reaches both sides of both bounds.
    assert 0.2 < refused / checked < 0.8, (refused, checked)


def test_breaking_the_arithmetic_fails_with_the_numbers_and_the_fix(chart):
    clients = values({"api": {"processes": 4, "autoscaling": {"maxReplicas": 20}},
                      "database": {"pooler": {"maxClientConn": 100}}})
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(clients, name=RELEASE, namespace=NAMESPACE)
    message = str(caught.value)
    assert ("client connections: (API pods 21 x API_PROCESSES 4 + worker pods 10) x "
            "APP_POOL_MAX 4 = 376 over 2 PgBouncer instances = 188 each, more than "
            "max_client_conn 100: raise database.pooler.maxClientConn to at least 188") in message
    assert "server connections" not in message
    servers = values({"database": {"pooler": {"instances": 4, "defaultPoolSize": 25}}})
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(servers, name=RELEASE, namespace=NAMESPACE)
    assert ("server connections: 4 PgBouncer instances x 30 (default_pool_size 25 + "
            "reserve_pool_size 5, x 1 pools, max_db_connections 0) + other connections 10 = "
            "130, more than PostgreSQL's 97 usable (max_connections 100 - 3 reserved)"
            ) in str(caught.value)


def test_the_readme_example_fits_as_computed(chart):
    # README, "Scaling past one machine": 20 API pods x 2 processes and 50 workers.
    plan = capacity.Plan(api_pods=20, api_processes=2, worker_pods=50, app_pool_max=4,
                         pooler_instances=3, max_client_conn=1000, default_pool_size=25,
                         reserve_pool_size=5, max_db_connections=0, max_connections=200,
                         reserved_connections=3, other_connections=10)
    assert (plan.clients, plan.clients_per_pooler, plan.servers, plan.usable) == (
        360, 120, 100, 197)
    assert plan.problems() == []
    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme.split("## Scaling past one machine", 1)[1].split("\n## ", 1)[0]
    for figure in ("(20 × 2 + 50) × 4 = 360", "⌈360 / 3⌉ = 120", "3 × (25 + 5) + 10 = 100",
                   "200 − 3 = 197", "3 × (20 + 5) + 10 = 85 of 97"):
        assert figure in section, figure
    # The chart agrees: refused with max_connections 100, and either fix renders.
    example = values({"api": {"processes": 2, "maxSurge": 1, "autoscaling": {"maxReplicas": 19}},
                      "worker": {"maxSurge": 0, "keda": {"maxReplicaCount": 50}},
                      "database": {"pooler": {"instances": 3, "defaultPoolSize": 25,
                                              "reservePoolSize": 5}}})
    with pytest.raises(helm.HelmRenderError, match="= 100, more than PostgreSQL's 97 usable"):
        chart.render(example, name=RELEASE, namespace=NAMESPACE)
    for fix in ({"database": {"postgres": {"maxConnections": 200}}},
                {"database": {"pooler": {"defaultPoolSize": 20}}}):
        config = render(chart, merged(example, fix)).get("ConfigMap", FULLNAME)
        assert config["metadata"]["annotations"][
            "video-tasks/client-connections-per-pooler"] == "120 of max_client_conn 1000"


def test_the_notes_say_how_to_reach_the_release(default, external):
    for rendered in (default, external):
        notes = rendered.notes
        assert "/api/generate-video" in notes and "/api/progress/" in notes
        assert "Authorization: Bearer $TOKEN" in notes
        assert f"exec deploy/{FULLNAME}-api -- python -m service doctor" in notes
        assert "helm test" in notes
    assert "console" in default.notes  # CloudNativePG's console is local only


def test_chart_files_are_where_the_readme_says():
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "templates/NOTES.txt",
                 "templates/_capacity.tpl"):
        assert (CHART_DIR / name).is_file(), name
    assert yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["apiVersion"] == "v2"
    assert Path(CHART_DIR / "values.schema.json").read_text().startswith("{")
