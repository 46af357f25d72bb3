"""Inference jobs end to end: upload -> REST submit -> real cpu worker -> .npz artifact."""

import io
import time

import numpy as np
import onnxruntime as ort
import pytest

from apps.jobs.models import Job
from workers.testing_models import build_test_model

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_terminal(job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.is_terminal:
            return job
        time.sleep(0.1)
    raise AssertionError("inference job did not finish")


@pytest.fixture
def scorer(member, tmp_path):
    _, client = member("operator")
    path = build_test_model("multi_io", tmp_path / "multi_io.onnx")
    with path.open("rb") as handle:
        assert client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart").status_code == 201
    client.post("/api/v1/models/scorer/versions/1/promote", {"stage": "production"})
    return client, path


def test_inference_through_rest_and_a_worker_matches_onnxruntime(start_worker, scorer):
    client, path = scorer
    start_worker("cpu")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 4)).astype(np.float32)
    ids = rng.integers(-5, 5, size=(37, 3)).astype(np.int64)
    response = client.post(
        "/api/v1/jobs/",
        {
            "kind": "inference",
            "params": {"model": "scorer", "inputs": {"x": x.tolist(), "ids": ids.tolist()}, "batch_size": 8},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["params"]["model"] == "scorer@1"
    job = wait_terminal(response.json()["id"])
    assert job.status == "succeeded", job.error
    assert job.result["rows"] == 37 and job.result["batches"] == 5
    assert job.result["provider"] == "CPUExecutionProvider"

    artifacts = client.get(f"/api/v1/jobs/{job.id}/artifacts").json()
    assert [a["name"] for a in artifacts] == ["outputs.npz"] and artifacts[0]["attempt"] == 1
    download = client.get(f"/api/v1/jobs/{job.id}/artifacts/{artifacts[0]['id']}/download")
    outputs = np.load(io.BytesIO(b"".join(download.streaming_content)), allow_pickle=False)

    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x, "ids": ids})
    np.testing.assert_allclose(outputs["y"], expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outputs["ids_sum"], expected[1])


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"model": "scorer", "inputs": {"x": [[1.0, 2.0]], "ids": [[1, 2, 3]]}}, "inputs.x", "4"),
        ({"model": "scorer", "inputs": {"x": [[1.0, 2.0, 3.0, 4.0]]}}, "inputs", "ids"),
        ({"model": "scorer@9", "inputs": {}}, "model", "no such version"),
        ({"model": "nope", "inputs": {}}, "model", "No model named"),
        (
            {"model": "scorer", "inputs": {"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3]]}, "outputs": ["z"]},
            "outputs",
            "Unknown outputs",
        ),
    ],
)
def test_bad_inference_params_are_400_naming_the_input(scorer, params, field, words):
    client, _ = scorer
    response = client.post("/api/v1/jobs/", {"kind": "inference", "params": params}, format="json")
    assert response.status_code == 400, response.json()
    fields = response.json()["fields"]
    key = next(k for k in fields if k.startswith(f"params.{field}"))
    assert words in " ".join(fields[key]), fields
    assert Job.objects.count() == 0
