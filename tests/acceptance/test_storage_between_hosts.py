"""No shared filesystem between hosts: web and workers keep different, empty MEDIA_ROOTs and have only an
S3-compatible server (moto over HTTP) in common; every job kind that reads or writes files still works."""

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from apps.agents.models import Memory
from apps.agents.services import agent_create, embedding_model_install, memory_create, scenario_create
from apps.jobs.models import Artifact, Job
from apps.registry.models import ModelVersion
from tests.s3 import CREDENTIALS
from workers.testing_models import build_test_model

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_terminal(job_id, timeout=180) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.is_terminal:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def download(client, job_id, name: str) -> bytes:
    artifacts = {a["name"]: a for a in client.get(f"/api/v1/jobs/{job_id}/artifacts").json()["results"]}
    response = client.get(f"/api/v1/jobs/{job_id}/artifacts/{artifacts[name]['id']}/download")
    assert response.status_code == 200
    return b"".join(response.streaming_content)


@pytest.fixture
def worker_host(s3_storage, tmp_path):
    """What a worker host gets: the same bucket, and a MEDIA_ROOT and cache of its own, both empty."""
    media, cache = tmp_path / "worker-media", tmp_path / "worker-cache"
    media.mkdir()
    env = {"ARTIFACT_STORAGE_URL": s3_storage.url, "MEDIA_ROOT": str(media), "ARTIFACT_CACHE_DIR": str(cache)}
    return {"env": {**env, **CREDENTIALS}, "media": media, "cache": cache}


def test_inference_compile_memory_import_and_simulations_run_on_a_host_sharing_only_the_bucket(
    start_worker, member, s3_storage, worker_host, settings, tmp_path
):
    membership, client = member("operator")
    web_media = Path(settings.MEDIA_ROOT)
    start_worker("cpu,control", env=worker_host["env"])

    # Inference: a model and an uploaded .npz, both stored by the web, fetched by the worker.
    model_path = build_test_model("multi_io", tmp_path / "multi_io.onnx")
    with model_path.open("rb") as handle:
        uploaded = client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")
    assert uploaded.status_code == 201, uploaded.json()
    rng = np.random.default_rng(3)
    x, ids = rng.standard_normal((300, 4)).astype(np.float32), rng.integers(-5, 5, (300, 3)).astype(np.int64)
    handle = io.BytesIO(npz_bytes(x=x, ids=ids))
    handle.name = "batch.npz"
    inputs = client.post("/api/v1/artifacts/", {"file": handle}, format="multipart").json()
    params = {"model": "scorer", "inputs_artifact": inputs["id"], "batch_size": 64}
    response = client.post("/api/v1/jobs/", {"kind": "inference", "params": params}, format="json")
    assert response.status_code == 201, response.json()
    inference = wait_terminal(response.json()["id"])
    assert inference.status == "succeeded", inference.error
    expected = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"x": x, "ids": ids})
    with np.load(io.BytesIO(download(client, inference.pk, "outputs.npz"))) as outputs:
        produced = [outputs[name] for name in outputs.files]
    for want, got in zip(expected, produced, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # Compile: the worker fetches the source, registers the compiled file in the bucket (fenced).
    response = client.post(
        "/api/v1/models/scorer/versions/1/compile", {"target": "cpu-optimized", "latency_runs": 3}, format="json"
    )
    assert response.status_code == 202, response.json()
    compiled_job = wait_terminal(response.json()["id"])
    assert compiled_job.status == "succeeded", compiled_job.error
    compiled = ModelVersion.objects.get(model__name="scorer", number=2)
    assert compiled.file.name in s3_storage.names()
    with compiled.file.open("rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == compiled.sha256

    # Memory import: the import file and the embedding model come from the bucket.
    embedding_model_install(membership=membership)
    agent = agent_create(membership=membership, name="ada", kind="research")
    lines = [{"text": f"note {i} about the harbour", "kind": "observation"} for i in range(20)]
    handle = io.BytesIO("\n".join(json.dumps(line) for line in lines).encode())
    handle.name = "notes.jsonl"
    response = client.post(f"/api/v1/agents/{agent.pk}/memories/import", {"file": handle}, format="multipart")
    assert response.status_code == 202, response.json()
    assert response.json()["params"]["source"] in s3_storage.names()
    imported = wait_terminal(response.json()["id"])
    assert imported.status == "succeeded", imported.error
    assert imported.result["embedded"] == 20 and Memory.objects.filter(agent=agent).count() == 20

    # Simulation and a sweep: outputs written by the cpu worker and (the sweep's chart) on control.
    agents = [agent]
    for index in range(3):
        other = agent_create(membership=membership, name=f"agent-{index}", kind="research")
        memory_create(membership=membership, agent=other, text="x", embedding=rng.standard_normal(384).tolist())
        agents.append(other)
    scenario = scenario_create(membership=membership, name="harbour", spec={"rounds": 10})
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/runs", {"seed": 1}, format="json")
    assert response.status_code == 201, response.json()
    simulation = wait_terminal(response.json()["id"])
    assert simulation.status == "succeeded", simulation.error
    assert download(client, simulation.pk, "chart.png").startswith(b"\x89PNG\r\n\x1a\n")
    with np.load(io.BytesIO(download(client, simulation.pk, "results.npz"))) as results:
        assert results["agent_ids"].tolist() == sorted(a.pk for a in agents)
    sweep = {"grid": {"learning_rate": [0.1, 0.2]}, "replications": 1}
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/sweeps", sweep, format="json")
    assert response.status_code == 201, response.json()
    swept = wait_terminal(response.json()["id"])
    assert swept.status == "succeeded", swept.error
    assert download(client, swept.pk, "sweep.png").startswith(b"\x89PNG\r\n\x1a\n")

    # Every output is an object of its job and attempt; nothing was written to either MEDIA_ROOT.
    stored = s3_storage.names()
    for job in (inference, simulation, swept):
        for artifact in Artifact.objects.filter(job=job):
            assert artifact.file.name == f"artifacts/{job.pk}/attempt-1/{artifact.name}"
            assert artifact.file.name in stored
    assert files_under(web_media) == [] and files_under(worker_host["media"]) == []
    # The worker fetched what it needed once, by digest, into its own cache.
    cached = {path.name.split(".")[0] for path in files_under(worker_host["cache"] / "sha256")}
    needed = {
        ModelVersion.objects.get(model__name="scorer", number=1).sha256,
        Artifact.objects.get(pk=inputs["id"]).sha256,
        imported.params["source_sha256"],
        ModelVersion.objects.get(model__task="embedding").sha256,
    }
    assert needed <= cached
    assert files_under(worker_host["cache"] / "work") == []  # outputs left nothing behind


def test_a_sandbox_run_long_output_reaches_the_bucket_through_control_hosts(
    start_worker, member, s3_storage, worker_host, settings
):
    _, client = member("developer")
    start_worker("control", env=worker_host["env"])
    start_worker("sandbox", app="workers.sandbox.app", broker_only=True)
    source = "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 2000)\n"
    response = client.post(
        "/api/v1/jobs/",
        {"kind": "sandbox", "params": {"source": source, "limits": {"output_bytes": 1_000_000}}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = wait_terminal(response.json()["id"], timeout=120)
    assert job.status == "succeeded", job.error

    assert download(client, job.pk, "stdout") == bytes(range(256)) * 2000
    # The chunks were staged in the bucket by control and removed once assembled.
    assert s3_storage.names() == [f"artifacts/{job.pk}/attempt-1/stdout"]
    assert files_under(Path(settings.MEDIA_ROOT)) == [] and files_under(worker_host["media"]) == []
