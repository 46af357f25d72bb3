"""Uploaded job inputs: REST upload and checks, organization scoping, inference params naming an upload."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from apps.jobs.models import Artifact, Job
from workers.testing_models import build_test_model

pytestmark = pytest.mark.django_db(transaction=True)


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client, data: bytes, name="inputs.npz"):
    handle = io.BytesIO(data)
    handle.name = name
    return client.post("/api/v1/artifacts/", {"file": handle}, format="multipart")


def stored_uploads() -> set[str]:
    root = Path(settings.MEDIA_ROOT) / "artifacts" / "uploads"
    return {str(p) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def scorer_inputs(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x": rng.standard_normal((rows, 4)).astype(np.float32),
        "ids": rng.integers(0, 9, (rows, 3)).astype(np.int64),
    }


@pytest.fixture
def scorer(member, tmp_path, broker):
    membership, client = member("developer")
    path = build_test_model("multi_io", tmp_path / "multi_io.onnx")
    with path.open("rb") as handle:
        response = client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")
    assert response.status_code == 201, response.json()
    return membership, client


def test_upload_records_sha256_size_and_the_arrays(member):
    _, client = member("developer")
    data = npz_bytes(**scorer_inputs(10))

    response = upload(client, data)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size_bytes"] == len(data)
    assert body["meta"] == {
        "format": "npz",
        "arrays": {"x": {"shape": [10, 4], "dtype": "float32"}, "ids": {"shape": [10, 3], "dtype": "int64"}},
    }
    artifact = Artifact.objects.get()
    assert artifact.job is None and artifact.role == "input" and artifact.file.path.startswith(str(settings.MEDIA_ROOT))
    download = client.get(body["download_url"])
    assert b"".join(download.streaming_content) == data


def test_the_same_bytes_give_back_the_first_upload(member):
    _, client = member("developer")
    data = npz_bytes(x=np.zeros((2, 4), dtype=np.float32))
    first, second = upload(client, data), upload(client, data, name="again.npz")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"] and Artifact.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("inputs.csv", b"1,2,3\n", ".npy or .npz"),
        ("inputs.npz", b"not an archive at all", "neither"),
        ("inputs.npz", npz_bytes(x=np.zeros((100, 4), dtype=np.float32))[:300], "npz"),
        ("objects.npz", npz_bytes(x=np.array([{"a": 1}], dtype=object)), "pickle"),
        ("inputs.npy", npz_bytes(x=np.zeros(3)), "is a .npz"),
        ("big.npz", npz_bytes(x=np.zeros((1000, 100), dtype=np.float32)), "At most"),
    ],
)
def test_bad_uploads_are_400_with_the_reason_and_leave_nothing_behind(member, settings, name, data, words):
    settings.ARTIFACTS_MAX_UPLOAD_BYTES = 100_000
    _, client = member("developer")
    before = stored_uploads()  # other tests' uploads stay in the shared MEDIA_ROOT

    response = upload(client, data, name=name)

    assert response.status_code == 400, response.json()
    assert words in " ".join(response.json()["fields"]["file"])
    assert Artifact.objects.count() == 0 and stored_uploads() == before


def test_a_viewer_may_not_upload(member):
    _, client = member("viewer")
    assert upload(client, npz_bytes(x=np.zeros(2))).status_code == 403


def test_another_organizations_upload_is_404_and_cannot_feed_a_job(member, scorer):
    _, other_client = member("developer")
    artifact_id = upload(other_client, npz_bytes(**scorer_inputs(5))).json()["id"]
    _, client = scorer

    assert client.get(f"/api/v1/artifacts/{artifact_id}/").status_code == 404
    assert client.get(f"/api/v1/artifacts/{artifact_id}/download").status_code == 404
    assert client.get("/api/v1/artifacts/").json()["results"] == []
    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer@1", "inputs_artifact": artifact_id}},
        format="json",
    )
    assert response.status_code == 400
    assert "No such artifact" in response.json()["fields"]["params.inputs_artifact"][0]


def test_an_upload_matching_the_signature_is_accepted_at_submit(scorer):
    _, client = scorer
    artifact_id = upload(client, npz_bytes(**scorer_inputs(50))).json()["id"]

    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer@1", "inputs_artifact": artifact_id, "batch_size": 16}},
        format="json",
    )

    assert response.status_code == 201, response.json()
    assert response.json()["params"]["inputs_artifact"] == artifact_id
    assert "inputs" not in response.json()["params"]


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"x": np.zeros((5, 4), dtype=np.float64), "ids": np.zeros((5, 3), dtype=np.int64)}, "input 'x' has dtype"),
        ({"x": np.zeros((5, 5), dtype=np.float32), "ids": np.zeros((5, 3), dtype=np.int64)}, "axis 1 must be 4"),
        ({"x": np.zeros((5, 4), dtype=np.float32)}, "missing input 'ids'"),
        (
            {"x": np.zeros((5, 4), dtype=np.float32), "ids": np.zeros((6, 3), dtype=np.int64)},
            "must have the same size",
        ),
        (
            {"x": np.zeros((5, 4), dtype=np.float32), "ids": np.zeros((5, 3), dtype=np.int64), "z": np.zeros(5)},
            "unknown input 'z'",
        ),
    ],
)
def test_an_upload_that_does_not_match_the_signature_is_400_naming_the_input(scorer, arrays, words):
    _, client = scorer
    artifact_id = upload(client, npz_bytes(**arrays)).json()["id"]

    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer@1", "inputs_artifact": artifact_id}},
        format="json",
    )

    assert response.status_code == 400, response.json()
    assert words in response.json()["fields"]["params.inputs_artifact"][0]
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"model": "scorer@1"}, "Give `inputs`"),
        ({"model": "scorer@1", "inputs": {}, "inputs_artifact": "00000000-0000-0000-0000-000000000000"}, "not both"),
        ({"model": "scorer@1", "inputs_artifact": "nope"}, "UUID"),
    ],
)
def test_inputs_come_inline_or_as_one_upload(scorer, params, words):
    _, client = scorer
    response = client.post("/api/v1/jobs/", {"kind": "inference", "params": params}, format="json")
    assert response.status_code == 400
    assert words in str(response.json()["fields"])
