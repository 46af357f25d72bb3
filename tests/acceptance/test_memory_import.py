"""Memory imports end to end: upload -> `memory_import` job -> real cpu worker embedding with the shipped model."""

import io
import json
import time

import numpy as np
import pytest

from apps.agents.models import Memory
from apps.agents.services import embedding_model_install
from apps.jobs.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_terminal(job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.is_terminal:
            return job
        time.sleep(0.1)
    raise AssertionError("memory import did not finish")


@pytest.fixture
def agent(member):
    membership, client = member("operator")
    embedding_model_install(membership=membership)
    body = client.post("/api/v1/agents/", {"name": "ada", "kind": "research"}, format="json").json()
    return client, body["id"]


def upload(client, agent_id, content: str, name: str, **fields):
    handle = io.BytesIO(content.encode())
    handle.name = name
    return client.post(f"/api/v1/agents/{agent_id}/memories/import", {"file": handle, **fields}, format="multipart")


def test_a_jsonl_import_is_embedded_by_a_worker_and_searchable(start_worker, agent):
    client, agent_id = agent
    start_worker("cpu")
    rng = np.random.default_rng(2)
    client_vector = rng.standard_normal(384)
    lines = [{"text": f"Routine log entry number {i} about the weather.", "kind": "observation"} for i in range(120)]
    lines.append({"text": "The Postgres upgrade failed and we rolled back.", "kind": "fact", "importance": 0.9})
    lines.append({"text": "comes with its own vector", "embedding": client_vector.tolist()})
    response = upload(client, agent_id, "\n".join(json.dumps(line) for line in lines), "m.jsonl", batch_size=16)
    assert response.status_code == 202, response.json()
    assert response.json()["kind"] == "memory_import" and response.json()["params"]["rows"] == 122

    job = wait_terminal(response.json()["id"])
    assert job.status == "succeeded", job.error
    assert job.result == {
        "agent_id": agent_id,
        "rows": 122,
        "inserted": 122,
        "already_imported": 0,
        "embedded": 121,
        "embedding_model": "minilm-l6-v2@1",
    }
    assert Memory.objects.filter(agent_id=agent_id, import_job=job).count() == 122
    own = Memory.objects.get(text="comes with its own vector")
    assert own.embedding_source == "client"
    np.testing.assert_allclose(own.embedding, client_vector, rtol=1e-6)

    results = client.get(
        f"/api/v1/agents/{agent_id}/memories/search", {"q": "database upgrade rollback", "k": 3, "kind": "fact"}
    ).json()["results"]
    assert results[0]["text"] == "The Postgres upgrade failed and we rolled back."


def test_a_csv_import_runs_too(start_worker, agent):
    client, agent_id = agent
    start_worker("cpu")
    csv_text = 'text,kind,importance,created_at\n"Bob, the neighbour, waved.",observation,0.2,2026-02-01T10:00:00Z\n'
    job = wait_terminal(upload(client, agent_id, csv_text, "m.csv").json()["id"])
    assert job.status == "succeeded", job.error
    memory = Memory.objects.get(agent_id=agent_id)
    assert memory.text == "Bob, the neighbour, waved." and memory.created_at.isoformat() == "2026-02-01T10:00:00+00:00"


def test_a_bad_file_is_refused_at_upload_naming_each_line(agent):
    client, agent_id = agent
    content = "\n".join(
        [json.dumps({"text": "fine"}), json.dumps({"text": ""}), json.dumps({"text": "x", "kind": "?"})]
    )
    response = upload(client, agent_id, content, "m.jsonl")
    assert response.status_code == 400
    body = response.json()
    assert body["fields"]["file"][0].startswith("line 2: text") and body["fields"]["file"][1].startswith("line 3: kind")
    assert body["detail"].startswith("file:")
    assert Job.objects.count() == 0
    response = upload(client, agent_id, "text\nhello\n", "m.txt")
    assert response.status_code == 400 and "format" in response.json()["fields"]


def test_import_params_cannot_point_outside_the_organizations_uploads(agent, member):
    client, agent_id = agent
    for source in ("../../etc/passwd", "imports/999999/x.jsonl", "models/x.onnx"):
        response = client.post(
            "/api/v1/jobs/",
            {"kind": "memory_import", "params": {"agent_id": agent_id, "source": source}},
            format="json",
        )
        assert response.status_code == 400
        assert response.json()["fields"]["params.source"] == ["No such uploaded file for this organization."]
