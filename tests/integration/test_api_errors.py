"""Every error under /api/ is the one JSON shape {detail, code, fields}, whatever produced it."""

import uuid

import pytest
from django.db import OperationalError

from apps.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def assert_error_shape(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert {"detail", "code", "fields"} <= set(body), body
    if code is not None:
        assert body["code"] == code, body
    return body


def test_unknown_route_under_api_is_a_json_404(member):
    _, client = member("developer")
    assert_error_shape(client.get("/api/v1/no-such-thing/"), 404, "not_found")
    assert_error_shape(client.get("/api/v1/jobs/not-a-uuid/"), 404, "not_found")
    assert_error_shape(client.get("/api/v2/jobs/"), 404, "not_found")


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_a_method_a_read_only_endpoint_lacks_is_a_json_405(member, method):
    _, client = member("developer")
    job_id = uuid.uuid4()
    body = assert_error_shape(getattr(client, method)(f"/api/v1/jobs/{job_id}/", {}, format="json"), 405)
    assert body["code"] == "method_not_allowed"
    assert_error_shape(getattr(client, method)("/api/v1/jobs/kinds/", {}, format="json"), 405)


def test_a_body_over_the_limit_is_a_json_413(member, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    _, client = member("developer")
    body = '{"kind": "sleep", "params": {"pad": "' + "x" * 2000 + '"}}'
    assert_error_shape(client.post("/api/v1/jobs/", body, content_type="application/json"), 413)
    assert Job.objects.count() == 0


def test_deeply_nested_json_is_a_400_not_a_500(member):
    _, client = member("developer")
    deep = '{"kind": "sleep", "params": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    body = assert_error_shape(client.post("/api/v1/jobs/", deep, content_type="application/json"), 400)
    assert "nested" in body["detail"]
    moderately = '{"kind": "sleep", "params": {"x": ' + "[" * 500 + "]" * 500 + "}}"
    assert_error_shape(client.post("/api/v1/jobs/", moderately, content_type="application/json"), 400)


def test_an_unexpected_exception_is_a_json_500_with_a_request_id_and_no_traceback(member, monkeypatch):
    _, client = member("developer")

    def explode(**kwargs):
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr("apps.jobs.selectors.job_list", explode)
    response = client.get("/api/v1/jobs/")
    body = assert_error_shape(response, 500, "server_error")
    assert body["request_id"] == response["X-Request-ID"]
    assert b"internal detail" not in response.content and b"Traceback" not in response.content


def test_database_down_is_a_503_with_retry_after(member, monkeypatch):
    _, client = member("developer")

    def unreachable(**kwargs):
        raise OperationalError("connection to server at 127.0.0.1 failed")

    monkeypatch.setattr("apps.jobs.selectors.job_list", unreachable)
    response = client.get("/api/v1/jobs/")
    body = assert_error_shape(response, 503, "unavailable")
    assert int(response["Retry-After"]) > 0 and body["request_id"]
    assert b"127.0.0.1" not in response.content


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=bogus", "status"),
        ("created_after=notadate", "created_after"),
        ("created_before=2026-13-45", "created_before"),
        ("parent=not-a-uuid", "parent"),
        ("cursor=garbage", "cursor"),
        ("cursor=cD1ub3RhZGF0ZQ==", "cursor"),  # base64 of p=notadate: well formed, not a position
        ("page_size=0", "page_size"),
        ("page_size=100000", "page_size"),
        ("page_size=ten", "page_size"),
        ("statuss=queued", "statuss"),
        ("parent=", "parent"),
        ("created_after=", "created_after"),
    ],
)
def test_an_invalid_list_parameter_is_a_400_naming_it(member, query, parameter):
    _, client = member("developer")
    body = assert_error_shape(client.get(f"/api/v1/jobs/?{query}"), 400, "invalid")
    assert parameter in body["fields"], body


@pytest.mark.parametrize("query", ["name=", "kind=wizard", "cursor=garbage"])
def test_agents_list_refuses_parameters_it_does_not_know_or_values_it_cannot_match(member, query):
    _, client = member("developer")
    body = assert_error_shape(client.get(f"/api/v1/agents/?{query}"), 400, "invalid")
    assert query.split("=")[0] in body["fields"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "sleep", "params": {}, "priority": "5"}, "priority"),
        ({"kind": "sleep", "params": {}, "max_attempts": "3"}, "max_attempts"),
        ({"kind": "sleep", "params": {"duration_s": True}}, "params.duration_s"),
        ({"kind": "sleep", "params": {"duration_s": "1"}}, "params.duration_s"),
        ({"kind": "sleep", "params": {}, "priority": True}, "priority"),
        ({"kind": 5, "params": {}}, "kind"),
    ],
)
def test_json_values_are_taken_at_their_type(member, body, field):
    _, client = member("developer")
    error = assert_error_shape(client.post("/api/v1/jobs/", body, format="json"), 400, "invalid")
    assert field in error["fields"], error
    assert Job.objects.count() == 0


def test_a_form_encoded_body_is_refused_with_415(member):
    _, client = member("developer")
    response = client.post("/api/v1/jobs/", {"kind": "sleep"})  # multipart, the test client's default
    assert_error_shape(response, 415, "unsupported_media_type")
    response = client.post("/api/v1/jobs/", "kind=sleep", content_type="application/x-www-form-urlencoded")
    assert_error_shape(response, 415, "unsupported_media_type")
    assert Job.objects.count() == 0


def test_a_huge_unknown_kind_is_not_echoed_in_full(member):
    _, client = member("developer")
    response = client.post("/api/v1/jobs/", {"kind": "k" * 1_000_000, "params": {}}, format="json")
    assert_error_shape(response, 400, "invalid")
    assert len(response.content) < 5_000


def test_a_huge_unknown_parameter_name_is_not_echoed_in_full(member):
    _, client = member("developer")
    response = client.post("/api/v1/jobs/", {"kind": "sleep", "params": {"p" * 100_000: 1}}, format="json")
    assert_error_shape(response, 400, "invalid")
    assert len(response.content) < 5_000


def test_database_down_in_a_middleware_is_still_a_json_503(member, monkeypatch):
    """Outside any view (here the session middleware), handler500 answers for /api/."""
    from django.contrib.sessions.middleware import SessionMiddleware
    from rest_framework.test import APIClient

    def unreachable(self, request):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(SessionMiddleware, "process_request", unreachable)
    client = APIClient(raise_request_exception=False)
    response = client.get("/api/v1/jobs/")
    assert_error_shape(response, 503, "unavailable")
    assert int(response["Retry-After"]) > 0
    page = APIClient(raise_request_exception=False).get("/admin/")
    assert page.status_code == 500 and not page["Content-Type"].startswith("application/json")


def test_a_time_filter_in_any_offset_is_compared_in_utc_not_a_500(member):
    """PostgreSQL refuses offsets past 15:59; schemathesis sent +23:51 and got a 500."""
    _, client = member("developer")
    response = client.get("/api/v1/jobs/", {"created_before": "3480-10-13T15:38:00+23:51"})
    assert response.status_code == 200, response.content
