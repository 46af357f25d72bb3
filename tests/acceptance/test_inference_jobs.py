"""Inference jobs end to end: model upload -> inline or uploaded inputs -> real cpu worker -> .npz artifact."""

import hashlib
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
        uploaded = client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")
    # A new model's first version is production from its upload: jobs name it "scorer" (finding 10).
    assert uploaded.status_code == 201 and uploaded.json()["stage"] == "production", uploaded.json()
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

    artifacts = client.get(f"/api/v1/jobs/{job.id}/artifacts").json()["results"]
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
        ({"model": "scorer@9", "inputs": {}}, "model", "no version 9"),
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


def test_uploaded_npz_inputs_run_through_a_worker_and_match_onnxruntime(start_worker, scorer):
    client, path = scorer
    start_worker("cpu")
    rng = np.random.default_rng(11)
    inputs = {
        "x": rng.standard_normal((5000, 4)).astype(np.float32),
        "ids": rng.integers(-100, 100, size=(5000, 3)).astype(np.int64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **inputs)
    buffer.seek(0)
    buffer.name = "batch.npz"
    upload = client.post("/api/v1/artifacts/", {"file": buffer}, format="multipart")
    assert upload.status_code == 201, upload.json()

    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer", "inputs_artifact": upload.json()["id"], "batch_size": 256}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = wait_terminal(response.json()["id"])

    assert job.status == "succeeded", job.error
    assert job.result["rows"] == 5000 and job.result["batches"] == 20
    assert job.result["inputs_artifact"] == upload.json()["id"]
    artifact = client.get(f"/api/v1/jobs/{job.id}/artifacts").json()["results"][0]
    data = b"".join(client.get(artifact["download_url"]).streaming_content)
    assert hashlib.sha256(data).hexdigest() == artifact["sha256"] == job.result["output_sha256"]
    outputs = np.load(io.BytesIO(data), allow_pickle=False)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    np.testing.assert_allclose(outputs["y"], expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outputs["ids_sum"], expected[1])


def test_cli_uploads_a_npy_for_a_single_input_model_and_downloads_the_outputs(start_worker, tmp_path):
    from tests.acceptance.test_cli import manage
    from tests.factories import MembershipFactory

    MembershipFactory(role="operator", user__username="ops")
    model = build_test_model("mlp", tmp_path / "mlp.onnx")
    assert manage("models", "upload", str(model), "--name", "embedder", "--as", "ops").returncode == 0
    x = np.random.default_rng(3).standard_normal((300, 384)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    start_worker("cpu")

    result = manage(
        "jobs",
        "submit",
        "inference",
        "--params",
        '{"model": "embedder@1", "batch_size": 64}',
        "--inputs-file",
        str(tmp_path / "x.npy"),
        "--wait",
        "--download",
        str(tmp_path / "out"),
        "--as",
        "ops",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "uploaded x.npy as artifact" in result.stdout and "wrote" in result.stdout
    outputs = np.load(tmp_path / "out" / "outputs.npz", allow_pickle=False)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(outputs[session.get_outputs()[0].name], expected, rtol=1e-5, atol=1e-5)


def test_the_readme_example_uploads_a_model_and_runs_it_by_name_from_the_command_line(start_worker, tmp_path):
    # Finding 10 of issue 20: the README's `models upload ... --name scorer`, then a job with
    # "model": "scorer", failed with "has no such version". As written there, by an admin.
    from tests.acceptance.test_cli import manage
    from tests.factories import MembershipFactory

    MembershipFactory(role="admin", user__username="readme-admin")
    model = build_test_model("multi_io", tmp_path / "model.onnx")
    rng = np.random.default_rng(11)
    inputs = {
        "x": rng.standard_normal((600, 4)).astype(np.float32),
        "ids": rng.integers(-5, 5, size=(600, 3)).astype(np.int64),
    }
    np.savez(tmp_path / "batch.npz", **inputs)
    start_worker("cpu")

    uploaded = manage("models", "upload", str(model), "--name", "scorer", "--as", "readme-admin")
    result = manage(
        "jobs", "submit", "inference", "--params", '{"model": "scorer", "batch_size": 256}',
        "--inputs-file", str(tmp_path / "batch.npz"), "--wait", "--download", str(tmp_path / "out"),
        "--as", "readme-admin",
    )  # fmt: skip

    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    assert "registered scorer@1" in uploaded.stdout and "is production" in uploaded.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    job = Job.objects.get()
    assert job.params["model"] == "scorer@1" and job.result["batches"] == 3
    outputs = np.load(tmp_path / "out" / "outputs.npz", allow_pickle=False)
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, inputs)
    np.testing.assert_allclose(outputs["y"], expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outputs["ids_sum"], expected[1])


def test_cli_refuses_an_upload_that_does_not_fit_the_model_with_exit_2(scorer, tmp_path):
    from tests.acceptance.test_cli import manage
    from tests.factories import MembershipFactory

    MembershipFactory(role="operator", user__username="ops2")
    # The scorer belongs to another organization: ops2 first uploads its own copy.
    model = build_test_model("multi_io", tmp_path / "m.onnx")
    assert manage("models", "upload", str(model), "--name", "scorer", "--as", "ops2").returncode == 0
    np.save(tmp_path / "x.npy", np.zeros((3, 4), dtype=np.float32))

    result = manage(
        "jobs", "submit", "inference", "--params", '{"model": "scorer@1"}', "--inputs-file", str(tmp_path / "x.npy"),
        "--as", "ops2",
    )  # fmt: skip

    assert result.returncode == 2
    assert "params.inputs_artifact" in result.stderr and ".npz" in result.stderr


def test_bench_inference_ends_with_one_ratio_per_batch_size_and_cleans_up(broker):
    from django.core.management import call_command

    from apps.jobs.models import Artifact

    out = io.StringIO()
    call_command("bench", "inference", "--batch-sizes", "1,8", "--seconds", "0.05", "--rounds", "1", stdout=out)

    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("ratio_b8=") and " ratio_b1=" in last, out.getvalue()
    assert all(float(pair.split("=")[1]) > 0 for pair in last.split())
    assert Job.objects.count() == 0 and Artifact.objects.count() == 0


def test_a_job_whose_upload_is_gone_fails_with_inputs_missing(start_worker, scorer):
    from apps.jobs.models import Artifact

    client, _ = scorer
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((3, 4), dtype=np.float32), ids=np.zeros((3, 3), dtype=np.int64))
    buffer.seek(0)
    buffer.name = "batch.npz"
    artifact_id = client.post("/api/v1/artifacts/", {"file": buffer}, format="multipart").json()["id"]
    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer", "inputs_artifact": artifact_id}},
        format="json",
    )
    Artifact.objects.filter(pk=artifact_id).delete()
    start_worker("cpu")

    job = wait_terminal(response.json()["id"])

    assert job.status == "failed" and job.error["code"] == "inputs_missing"


def test_model_that_mixes_rows_is_run_whole_through_a_worker_and_gives_the_right_numbers(
    member, start_worker, tmp_path
):
    # Finding 1 of issue 20: softmax over the batch axis, 1,000 rows at batch_size 256,
    # came back split (columns summing to 4) with status succeeded.
    import onnx
    from onnx import TensorProto, helper

    _, client = member("owner")
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["p"], axis=0)],
        "mixing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "mixing.onnx"
    onnx.save_model(model, str(path))
    with path.open("rb") as handle:
        assert client.post("/api/v1/models/", {"file": handle, "name": "mixing"}, format="multipart").status_code == 201
    start_worker("cpu")
    x = np.random.default_rng(1).standard_normal((1000, 4)).astype(np.float32)

    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "mixing@1", "inputs": {"x": x.tolist()}, "batch_size": 256}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = wait_terminal(response.json()["id"])

    assert job.status == "succeeded", job.error
    assert job.result["batches"] == 1
    artifact = client.get(f"/api/v1/jobs/{job.id}/artifacts").json()["results"][0]
    download = client.get(f"/api/v1/jobs/{job.id}/artifacts/{artifact['id']}/download")
    p = np.load(io.BytesIO(b"".join(download.streaming_content)), allow_pickle=False)["p"]
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p.sum(axis=0), np.ones(4), rtol=1e-4)
