"""`/` says what this is and where to go; `/api/v1/` is an API root a client can start from."""

import pytest

pytestmark = pytest.mark.django_db


def test_the_root_page_links_admin_docs_flower_and_health(client, settings):
    settings.FLOWER_URL = "http://flower.example:5599"
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Switchyard" in page
    for link in (
        "/admin/",
        "/api/docs/",
        "/api/v1/",
        "/api/schema/",
        "/healthz",
        "/readyz",
        "http://flower.example:5599",
    ):
        assert f'href="{link}"' in page, link


def test_the_root_page_runs_no_inline_script_under_the_csp(client):
    response = client.get("/")
    assert "<script" not in response.content.decode()
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "unsafe-inline" not in response["Content-Security-Policy"].split("script-src")[1].split(";")[0]


def test_the_api_root_lists_the_collections_without_credentials(client):
    response = client.get("/api/v1/")
    assert response.status_code == 200
    body = response.json()
    assert body["schema"].endswith("/api/schema/") and body["docs"].endswith("/api/docs/")
    assert body["endpoints"]["jobs"].endswith("/api/v1/jobs/")
    assert body["endpoints"]["job_kinds"].endswith("/api/v1/jobs/kinds/")
    assert body["endpoints"]["agents"].endswith("/api/v1/agents/")


def test_the_api_root_answers_a_token_client_too(member):
    _, client = member("viewer")
    response = client.get("/api/v1/")  # checked against the schema by tests/contract.py
    assert response.status_code == 200 and "models" in response.json()["endpoints"]
