"""A client generated from /api/schema/ with openapi-python-client (offline) does real work.

The generated package talks to the Django app in-process (httpx's WSGI transport), so what
it exercises is exactly the schema a client developer would download.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.contract import schema

pytestmark = pytest.mark.django_db(transaction=True)

PACKAGE = "switchyard_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    pytest.importorskip("openapi_python_client")
    workdir = tmp_path_factory.mktemp("client")
    (workdir / "schema.json").write_text(json.dumps(schema()))
    (workdir / "config.yaml").write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    generator = Path(sys.executable).with_name("openapi-python-client")
    result = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(workdir / "schema.json"),
            "--output-path",
            str(workdir / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(workdir / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # No warning about the schema either: every operation and component must generate.
    assert "Warning" not in result.stdout, result.stdout
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(workdir))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


@pytest.fixture
def api(generated, member):
    import httpx
    from django.core.handlers.wsgi import WSGIHandler

    from apps.accounts.services import api_token_create

    membership, _ = member("developer")
    token = api_token_create(membership=membership, name="generated").plaintext
    return generated.AuthenticatedClient(
        base_url="http://localhost",
        token=token,
        prefix="Token",
        httpx_args={"transport": httpx.WSGITransport(app=WSGIHandler())},
    )


def test_the_generated_client_submits_a_job_and_lists_with_a_cursor(generated, api, broker):
    from switchyard_client.api.v1 import jobs_detail, jobs_list, jobs_submit
    from switchyard_client.models import JobOutput, JobSubmitInput, PaginatedJobSummaryList

    submitted = []
    for number in range(3):
        body = JobSubmitInput(kind="sleep", params={"duration_s": 0, "steps": number + 1}, priority=3)
        response = jobs_submit.sync_detailed(client=api, body=body, idempotency_key=f"gen-{number}")
        assert response.status_code == 201, response.content
        assert isinstance(response.parsed, JobOutput) and response.parsed.status.value == "queued"
        submitted.append(response.parsed.id)

    again = jobs_submit.sync_detailed(
        client=api,
        body=JobSubmitInput(kind="sleep", params={"duration_s": 0, "steps": 1}, priority=3),
        idempotency_key="gen-0",
    )
    assert again.status_code == 200 and again.parsed.id == submitted[0]

    first = jobs_list.sync(client=api, page_size=2)
    assert isinstance(first, PaginatedJobSummaryList) and len(first.results) == 2
    cursor = first.next_.split("cursor=")[1].split("&")[0]
    second = jobs_list.sync(client=api, page_size=2, cursor=cursor)
    assert [job.id for job in first.results + second.results] == list(reversed(submitted))

    detail = jobs_detail.sync(client=api, job_id=submitted[0])
    assert detail.params["steps"] == 1


def test_the_generated_client_reads_errors_in_the_error_shape(generated, api):
    from switchyard_client.api.v1 import jobs_detail, jobs_list, jobs_submit
    from switchyard_client.models import Error, JobSubmitInput

    invalid = jobs_submit.sync_detailed(client=api, body=JobSubmitInput(kind="teleport", params={}))
    assert invalid.status_code == 400 and isinstance(invalid.parsed, Error)
    assert invalid.parsed.code == "invalid" and "kind" in invalid.parsed.fields.additional_properties

    missing = jobs_detail.sync_detailed(client=api, job_id="00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.parsed.code == "not_found"

    bad_cursor = jobs_list.sync_detailed(client=api, cursor="garbage")
    assert bad_cursor.status_code == 400 and "cursor" in bad_cursor.parsed.fields.additional_properties
