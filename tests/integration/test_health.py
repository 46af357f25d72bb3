import json
import os
import subprocess
import sys

import psycopg2
import pytest
from django.conf import settings as django_settings
from django.test import override_settings

REPO_ROOT = django_settings.BASE_DIR


def test_healthz_answers_without_authentication(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
@pytest.mark.broker
def test_readyz_is_200_when_database_and_broker_are_reachable(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.django_db
@override_settings(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
def test_readyz_is_503_naming_the_broker_when_it_is_down(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["checks"]["database"] == "ok"


def _preflight(**env_overrides) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.local", **env_overrides}
    return subprocess.run(
        [sys.executable, "manage.py", "preflight"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_preflight_says_in_one_line_that_the_broker_is_down():
    result = _preflight(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "broker at redis://127.0.0.1:1/0 is unreachable" in errors[0]


def test_preflight_says_in_one_line_that_the_database_is_unreachable():
    result = _preflight(DATABASE_URL="postgres://nobody:x@127.0.0.1:1/nothing")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: database at postgresql://127.0.0.1:1/nothing is unreachable" in result.stderr


def _system_postgres_without_pgvector() -> str | None:
    """The machine's own PostgreSQL (no pgvector), when one is running."""
    url = "postgres://postgres@127.0.0.1:5432/postgres"
    try:
        conn = psycopg2.connect(url, connect_timeout=2)
    except psycopg2.Error:
        return None
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        has_vector = cur.fetchone() is not None
    conn.close()
    return None if has_vector else url


@pytest.mark.skipif(_system_postgres_without_pgvector() is None, reason="needs a PostgreSQL without pgvector on :5432")
def test_preflight_says_in_one_line_that_the_database_lacks_pgvector():
    result = _preflight(DATABASE_URL=_system_postgres_without_pgvector())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "lacks the pgvector extension" in result.stderr


@pytest.mark.django_db
def test_migrations_installed_pgvector(django_db_blocker):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
    major, minor = (int(part) for part in version.split(".")[:2])
    assert (major, minor) >= (0, 8)


def test_openapi_schema_and_docs_are_served(client, django_user_model, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert document["info"]["title"] == "Switchyard API"
    assert "/api/v1/me" in document["paths"]
    assert client.get("/api/docs/").status_code == 200
