"""The schema at /api/schema/ says what the API really does (responses are checked on every
test request by tests/contract.py; these tests check what the schema declares)."""

import pytest

from tests.contract import check_response, schema

pytestmark = pytest.mark.django_db

LISTS = [
    ("/api/v1/jobs/", "JobSummary"),
    ("/api/v1/agents/", "AgentOutput"),
    ("/api/v1/agents/{agent_id}/memories/", "MemoryOutput"),
    ("/api/v1/scenarios/", "ScenarioOutput"),
    ("/api/v1/scenarios/{scenario_id}/runs", "JobSummary"),
    ("/api/v1/models/", "ModelSummary"),
    ("/api/v1/artifacts/", "InputArtifactOutput"),
    ("/api/v1/audit/", "AuditEvent"),
    ("/api/v1/members/", "Member"),
    ("/api/v1/invitations/", "Invitation"),
    ("/api/v1/invitations/received", "ReceivedInvitation"),
    ("/api/v1/tokens/", "ApiToken"),
    ("/api/v1/jobs/{job_id}/events", "JobEventOutput"),
    ("/api/v1/jobs/{job_id}/artifacts", "ArtifactOutput"),
]
UPLOADS = {
    ("/api/v1/artifacts/", "post"),
    ("/api/v1/models/", "post"),
    ("/api/v1/agents/{agent_id}/memories/import", "post"),
}


def operations():
    for path, methods in schema()["paths"].items():
        for method, operation in methods.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield path, method, operation


def _component(ref: str) -> dict:
    return schema()["components"]["schemas"][ref.rsplit("/", 1)[-1]]


@pytest.mark.parametrize(("path", "item"), LISTS)
def test_a_list_is_declared_as_a_cursor_page_with_a_bounded_page_size(path, item):
    operation = schema()["paths"][path]["get"]
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    page = _component(body["$ref"])
    assert set(page["properties"]) == {"next", "previous", "results"}
    assert page["properties"]["results"]["items"]["$ref"].endswith(f"/{item}")
    parameters = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
    assert {"cursor", "page_size"} <= set(parameters)
    assert parameters["page_size"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500}


def test_every_list_answered_by_the_api_is_a_cursor_page():
    """Any GET whose 200 is an array is a list that escaped pagination (kinds and queues are the
    deployment's configuration, a handful of rows, not data that grows)."""
    for path, method, operation in operations():
        if method != "get" or path in ("/api/v1/jobs/kinds/", "/api/v1/queues/"):
            continue
        body = operation["responses"].get("200", {}).get("content", {}).get("application/json", {})
        assert body.get("schema", {}).get("type") != "array", path


def test_job_lists_are_summaries_without_params_or_result():
    summary = _component("#/components/schemas/JobSummary")
    assert "params" not in summary["properties"] and "result" not in summary["properties"]
    assert {"params", "result"} <= set(_component("#/components/schemas/JobOutput")["properties"])


def test_model_lists_are_summaries_without_signatures_or_reports():
    version = _component("#/components/schemas/VersionSummary")
    assert "report" not in version["properties"] and "signature" not in version["properties"]


def test_job_kinds_is_declared_as_the_array_it_returns():
    body = schema()["paths"]["/api/v1/jobs/kinds/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert body["schema"]["type"] == "array"


@pytest.mark.parametrize("path", ["/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/retry"])
def test_cancel_and_retry_document_the_202_they_answer(path):
    assert set(schema()["paths"][path]["post"]["responses"]) & {"200", "201", "202"} == {"202"}


def test_every_operation_documents_its_errors_in_the_error_shape():
    for path, method, operation in operations():
        for code in ("400", "401", "403", "429", "500", "503"):
            response = operation["responses"].get(code)
            assert response is not None, (method, path, code)
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if "{" in path:
            assert "404" in operation["responses"], (method, path)
    assert set(_component("#/components/schemas/Error")["required"]) == {"detail", "code", "fields"}


def test_request_bodies_are_json_only_except_the_uploads():
    for path, method, operation in operations():
        content = operation.get("requestBody", {}).get("content", {})
        if not content:
            continue
        expected = {"multipart/form-data"} if (path, method) in UPLOADS else {"application/json"}
        assert set(content) == expected, (method, path, sorted(content))


def test_the_submit_documents_the_idempotency_conflict():
    assert "422" in schema()["paths"]["/api/v1/jobs/"]["post"]["responses"]


class _FakeResponse(dict):
    def __init__(self, status_code, body):
        super().__init__({"Content-Type": "application/json"})
        self.status_code = status_code
        self._body = body

    def json(self):
        return self._body


def test_the_response_check_catches_an_undocumented_status_and_a_wrong_body():
    with pytest.raises(AssertionError, match="not documented"):
        check_response("POST", "/api/v1/jobs/00000000-0000-0000-0000-000000000000/cancel", _FakeResponse(200, {}))
    with pytest.raises(AssertionError, match="is not of type 'object'"):
        check_response("GET", "/api/v1/agents/", _FakeResponse(200, []))
    check_response("GET", "/api/v1/agents/", _FakeResponse(200, {"next": None, "previous": None, "results": []}))
