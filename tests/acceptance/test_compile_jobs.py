"""Compile jobs end to end: REST or CLI -> real cpu worker -> a validated staging version (or nothing at all)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from django.conf import settings
from onnx import numpy_helper

from apps.core.worker_process import current_database_url
from apps.jobs.models import Job
from apps.registry.models import ModelVersion
from workers.compile import generate_sample_inputs
from workers.testing_models import build_test_model

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAST_CONTRACT = {
    "JOBS_LEASE_SECONDS": "3",
    "JOBS_HEARTBEAT_SECONDS": "0.5",
    "JOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.2",
}


def wait_terminal(job_id, timeout=90) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.is_terminal:
            return job
        time.sleep(0.1)
    raise AssertionError(f"compile job {job_id} did not finish in {timeout}s")


def stored_model_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT) / "models"
    return {str(p) for p in root.rglob("*.onnx")} if root.exists() else set()


def upload(client, path: Path, name: str):
    with path.open("rb") as handle:
        response = client.post("/api/v1/models/", {"file": handle, "name": name}, format="multipart")
    assert response.status_code == 201, response.json()


def test_int8_compile_through_rest_and_a_worker_registers_a_validated_staging_version(start_worker, member, tmp_path):
    _, client = member("developer")
    source_path = build_test_model("mlp", tmp_path / "mlp.onnx", seed=5)
    upload(client, source_path, "encoder")
    start_worker("cpu", env=FAST_CONTRACT)

    response = client.post(
        "/api/v1/models/encoder/versions/1/compile",
        {"target": "cpu-int8", "sample_rows": 64, "seed": 9, "latency_runs": 5},
        format="json",
    )
    assert response.status_code == 202, response.json()
    job = wait_terminal(response.json()["id"])

    assert job.status == "succeeded", job.error
    assert job.result["model"] == "encoder@2" and job.result["source"] == "encoder@1" and job.result["created"]
    compiled = ModelVersion.objects.get(model__name="encoder", number=2)
    assert compiled.stage == "staging" and compiled.derived_from.number == 1 and compiled.device_preference == "cpu"
    report = compiled.report
    own = {**job.result["report"], "job_id": str(job.id), "source": "encoder@1"}
    # Every compile job's report is kept; with one job the version's report is that job's.
    assert report == {**own, "reports": [own]}
    assert report["passed"] is True

    # The report's numbers, recomputed from the stored files with plain onnxruntime.
    x = generate_sample_inputs(compiled.derived_from.signature["inputs"], rows=64, seed=9)["x"]
    expected = ort.InferenceSession(str(source_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    produced = ort.InferenceSession(compiled.file.path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cosine = np.mean(
        (expected * produced).sum(axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(produced, axis=1))
    )
    assert report["max_abs_error"] == pytest.approx(float(np.abs(expected - produced).max()), abs=1e-5)
    assert report["mean_cosine"] == pytest.approx(float(cosine), abs=1e-5)
    assert report["size_bytes_before"] == source_path.stat().st_size
    assert report["size_bytes_after"] == compiled.size_bytes == Path(compiled.file.path).stat().st_size
    assert "MatMulInteger" in {node.op_type for node in onnx.load(compiled.file.path).graph.node}

    detail = client.get("/api/v1/models/encoder/").json()
    assert [(v["number"], v["stage"], v["derived_from"]) for v in detail["versions"]] == [
        (2, "staging", 1),
        (1, "draft", None),
    ]
    # A passing report opens production to roles that may promote, without a reason.
    assert (
        client.post("/api/v1/models/encoder/versions/2/promote", {"stage": "production"}, format="json").status_code
        == 403
    )
    _, operator = member("operator", organization=compiled.model.organization)
    assert (
        operator.post("/api/v1/models/encoder/versions/2/promote", {"stage": "production"}, format="json").status_code
        == 200
    )


def test_a_model_that_cannot_be_compiled_fails_with_the_reason_and_leaves_no_version(start_worker, member, tmp_path):
    _, client = member("developer")
    path = build_test_model("mlp", tmp_path / "mlp.onnx", seed=6)
    model = onnx.load(str(path))
    weights = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weights[3, 3] = 2e5  # beyond float16's 65504
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, model.graph.initializer[0].name))
    onnx.save(model, str(path))
    upload(client, path, "wide")
    files_before = stored_model_files()
    start_worker("cpu", env=FAST_CONTRACT)

    response = client.post("/api/v1/models/wide/versions/1/compile", {"target": "gpu-fp16"}, format="json")
    job = wait_terminal(response.json()["id"])

    assert job.status == "failed" and job.attempt == 1
    assert job.error["code"] == "fp16_out_of_range"
    assert "'W0'" in job.error["message"] and "MatMul" in job.error["message"] and "65504" in job.error["message"]
    assert job.error["details"]["initializer"] == "W0"
    assert ModelVersion.objects.filter(model__name="wide").count() == 1
    assert stored_model_files() == files_before


def test_a_cancelled_compile_leaves_no_version_and_no_file(start_worker, member, tmp_path):
    membership, client = member("developer")
    upload(client, build_test_model("mlp", tmp_path / "mlp.onnx", seed=8), "slow")
    files_before = stored_model_files()
    start_worker("cpu", env=FAST_CONTRACT)
    # Enough timed runs of a large batch to be cancelled while it measures.
    response = client.post(
        "/api/v1/models/slow/versions/1/compile",
        {"target": "cpu-optimized", "sample_rows": 512, "latency_runs": 1000},
        format="json",
    )
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while Job.objects.get(pk=job_id).progress < 0.5:
        assert time.monotonic() < deadline, "compile never reached its latency runs"
        time.sleep(0.1)
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202

    job = wait_terminal(job_id, timeout=30)
    assert job.status == "cancelled"
    assert ModelVersion.objects.filter(model__name="slow").count() == 1
    assert stored_model_files() == files_before
    assert membership.organization.ml_models.get().versions.count() == 1


def test_cli_compile_waits_and_exits_5_when_the_report_fails_then_an_owner_overrides(start_worker, member, tmp_path):
    owner, client = member("owner")
    upload(client, build_test_model("attention", tmp_path / "attention.onnx"), "attn")
    start_worker("cpu", env=FAST_CONTRACT)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "DATABASE_URL": current_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }

    def manage(*args):
        command = [sys.executable, "manage.py", *args, "--as", owner.user.username]
        return subprocess.run(
            command, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    compiled = manage(
        "models", "compile", "attn@1", "--target", "cpu-int8", "--min-cosine", "1.0", "--latency-runs", "3", "--wait"
    )
    assert compiled.returncode == 5, compiled.stderr
    assert "attn@2 did not pass" in compiled.stdout and "mean cosine similarity" in compiled.stdout

    refused = manage("models", "promote", "attn@2", "--stage", "production")
    assert refused.returncode == 2 and "override_reason" in refused.stderr
    promoted = manage("models", "promote", "attn@2", "--stage", "production", "--override-reason", "accepted drift")
    assert promoted.returncode == 0, promoted.stderr
    assert "attn@2 production" in promoted.stdout

    bad = manage("models", "compile", "attn@1", "--target", "cpu-int8", "--sample-rows", "0")
    assert bad.returncode == 2 and "sample_rows" in bad.stderr
