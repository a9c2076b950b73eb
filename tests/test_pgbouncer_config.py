"""The PgBouncer renderer: the same templates for the native stack and compose."""

from __future__ import annotations

import configparser
import os

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgbouncer import render


def rendered(tmp_path, **overrides):
    values = render.settings_from_env({})
    values.update(overrides)
    ini, auth = render.render(values, tmp_path)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(ini.read_text())
    return parser, auth


def test_transaction_mode_scram_and_auth_query(tmp_path):
    config, auth = rendered(tmp_path)
    pgb = config["pgbouncer"]
    assert pgb["pool_mode"] == "transaction"
    assert pgb["auth_type"] == "scram-sha-256"
    assert pgb["auth_user"] == "pgbouncer_auth"
    assert "pgbouncer.user_lookup($1)" in pgb["auth_query"]
    assert pgb["admin_users"] == "pgbouncer_admin"
    assert "pgbouncer_stats" in pgb["stats_users"]
    for knob in ("default_pool_size", "max_client_conn", "reserve_pool_size",
                 "query_wait_timeout", "server_idle_timeout", "max_db_connections"):
        assert pgb[knob].isdigit()
    assert os.stat(auth).st_mode & 0o077 == 0, "the auth file must be private"


def test_settings_come_from_pgbouncer_environment_variables(tmp_path):
    values = render.settings_from_env({"PGBOUNCER_DEFAULT_POOL_SIZE": "17",
                                       "PGBOUNCER_MAX_CLIENT_CONN": "900"})
    ini, _ = render.render(values, tmp_path)
    text = ini.read_text()
    assert "default_pool_size = 17" in text
    assert "max_client_conn = 900" in text


def test_console_users_get_scram_secrets_not_passwords(tmp_path):
    _, auth = rendered(tmp_path, admin_password="very-secret-admin")
    text = auth.read_text()
    assert "very-secret-admin" not in text
    assert '"pgbouncer_admin" "SCRAM-SHA-256$4096:' in text


def test_scram_secret_logs_into_postgresql(stack, settings):
    """A role whose stored secret is our verifier accepts the password: the format is
    exactly PostgreSQL's, so PgBouncer can check console logins against it."""
    secret = render.scram_secret("pencil-42")
    with psycopg.connect(stack.superuser_url(), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS scram_probe")
        admin.execute(sql.SQL("CREATE ROLE scram_probe LOGIN PASSWORD {}").format(
            sql.Literal(secret)))
        try:
            probe = make_conninfo(settings.database_direct_url, user="scram_probe",
                                  password="pencil-42", dbname="postgres")
            with psycopg.connect(probe) as conn:
                assert conn.execute("SELECT current_user").fetchone()[0] == "scram_probe"
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(make_conninfo(probe, password="pencil-43")).close()
        finally:
            admin.execute("DROP ROLE scram_probe")


@pytest.mark.parametrize(("override", "complaint"), [
    ({"default_pool_size": "ten"}, "PGBOUNCER_DEFAULT_POOL_SIZE"),
    ({"admin_password": 'a"b'}, "PGBOUNCER_ADMIN_PASSWORD"),
    ({"db_name": "Robert'); DROP"}, "PGBOUNCER_DB_NAME"),
    ({"listen_addr": "0.0.0.0\nauth_type = trust"}, "PGBOUNCER_LISTEN_ADDR"),
    ({"max_db_connections": "3", "default_pool_size": "10"}, "PGBOUNCER_MAX_DB_CONNECTIONS"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, override, complaint):
    values = render.settings_from_env({})
    values.update(override)
    with pytest.raises(ValueError, match=complaint):
        render.render(values, tmp_path)
    assert not (tmp_path / "pgbouncer.ini").exists()


def test_the_running_pgbouncer_is_in_transaction_mode(settings):
    with psycopg.connect(settings.pgbouncer_admin_url, autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as console:
        cur = console.execute("SHOW CONFIG")
        names = [c.name for c in cur.description]
        config = {row[names.index("key")]: row[names.index("value")] for row in cur}
    assert config["pool_mode"] == "transaction"
    assert config["auth_type"] == "scram-sha-256"


def test_the_app_role_reaches_postgresql_only_with_its_password(settings):
    wrong = settings.database_url.replace("app-local-password", "wrong-password")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(wrong, connect_timeout=3).close()
    with psycopg.connect(settings.database_url, prepare_threshold=None,
                         autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "app"
        # The role's timeouts reach connections made through PgBouncer.
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"


def test_superusers_cannot_log_in_through_pgbouncer(settings, stack):
    url = settings.database_url.replace("app:app-local-password", "postgres:anything")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3).close()
