import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from onnx import TensorProto, helper

from apps.registry import services
from apps.registry.models import ModelVersion
from workers.testing_models import build_test_model

pytestmark = pytest.mark.django_db(transaction=True)


def upload(client, path: Path, name="mlp", **fields):
    with path.open("rb") as handle:
        return client.post("/api/v1/models/", {"file": handle, "name": name, **fields}, format="multipart")


def stored_model_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT) / "models"
    return {str(p) for p in root.rglob("*.onnx")} if root.exists() else set()


@pytest.fixture
def multi_io(tmp_path):
    return build_test_model("multi_io", tmp_path / "multi_io.onnx")


def test_upload_registers_a_version_with_its_signature(member, multi_io):
    _, client = member("developer")
    response = upload(client, multi_io, name="scorer", task="classification")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["model"] == "scorer" and body["number"] == 1 and body["stage"] == "draft"
    inputs = {t["name"]: t for t in body["signature"]["inputs"]}
    assert inputs["x"]["dtype"] == "float32" and inputs["ids"]["dtype"] == "int64"
    assert inputs["x"]["shape"][1] == 4
    assert body["sha256"] == ModelVersion.objects.get().sha256


def test_the_same_bytes_give_back_the_existing_version(member, multi_io):
    _, client = member("developer")
    first = upload(client, multi_io)
    second = upload(client, multi_io)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["number"] == 1 and ModelVersion.objects.count() == 1


def _external_data_model(path: Path) -> Path:
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../outside.bin")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("case", ["not_onnx", "truncated", "external_data", "unsupported_opset", "too_large"])
def test_bad_uploads_are_400_with_the_reason_and_leave_nothing_behind(member, multi_io, tmp_path, settings, case):
    _, client = member("developer")
    before = stored_model_files()
    if case == "not_onnx":
        path = tmp_path / "x.onnx"
        path.write_bytes(b"this is not a model at all" * 10)
    elif case == "truncated":
        path = tmp_path / "t.onnx"
        path.write_bytes(multi_io.read_bytes()[: multi_io.stat().st_size // 2])
    elif case == "external_data":
        path = _external_data_model(tmp_path / "e.onnx")
    elif case == "unsupported_opset":
        path = build_test_model("multi_io", tmp_path / "o.onnx", opset=99)
    else:
        settings.REGISTRY_MAX_MODEL_BYTES = 100
        path = multi_io
    response = upload(client, path)
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["details"]["code"] == case and "file" in body["fields"]
    assert body["detail"].startswith("file: ")
    assert ModelVersion.objects.count() == 0
    assert stored_model_files() == before


def test_external_data_refusal_names_the_tensor_and_where_it_points(member, tmp_path):
    _, client = member("developer")
    body = upload(client, _external_data_model(tmp_path / "e.onnx")).json()
    assert "'w'" in body["detail"] and "../../outside.bin" in body["detail"]


def _single_node_model(path: Path, *, op: str, domain: str, version: int, **attributes) -> Path:
    """A model whose only opset import is `domain` (no ai.onnx opset at all)."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], domain=domain, **attributes)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version)], ir_version=8)
    onnx.save(model, path)
    return path


def test_a_model_importing_only_ai_onnx_ml_is_registered_with_no_default_opset(member, tmp_path):
    # ModelVersion.opset was NOT NULL while inspect_model reads None for a model with no
    # ai.onnx import: the upload ended in a 500.
    _, client = member("developer")
    path = _single_node_model(tmp_path / "ml.onnx", op="Binarizer", domain="ai.onnx.ml", version=3, threshold=0.5)

    response = upload(client, path, name="binarizer")

    assert response.status_code == 201, response.json()
    assert response.json()["opset"] is None
    assert ModelVersion.objects.get().opset is None
    assert client.get("/api/v1/models/binarizer/").json()["versions"][0]["opset"] is None


def test_a_model_importing_only_an_unknown_custom_domain_is_refused_with_the_reason(member, tmp_path):
    _, client = member("developer")
    path = _single_node_model(tmp_path / "custom.onnx", op="Frobnicate", domain="com.example", version=1)
    before = stored_model_files()

    response = upload(client, path, name="custom")

    assert response.status_code == 400, response.json()
    assert "com.example:Frobnicate" in response.json()["detail"]
    assert ModelVersion.objects.count() == 0 and stored_model_files() == before


def test_promote_moves_the_production_alias_and_archives_the_previous(member, tmp_path):
    membership, client = member("operator")
    one = build_test_model("multi_io", tmp_path / "a.onnx", seed=1)
    two = build_test_model("multi_io", tmp_path / "b.onnx", seed=2)
    upload(client, one)
    upload(client, two)
    assert (
        client.post("/api/v1/models/mlp/versions/1/promote", {"stage": "production"}, format="json").status_code == 200
    )
    assert services.model_version_get(membership=membership, reference="mlp").number == 1
    client.post("/api/v1/models/mlp/versions/2/promote", {"stage": "production"}, format="json")
    detail = client.get("/api/v1/models/mlp/").json()
    assert detail["aliases"]["production"]["version"] == 2
    stages = {v["number"]: v["stage"] for v in detail["versions"]}
    assert stages == {1: "archived", 2: "production"}
    assert services.model_version_get(membership=membership, reference="mlp@production").number == 2
    assert services.model_version_get(membership=membership, reference="mlp@1").number == 1


def test_canary_gets_its_share_of_unqualified_references(member, tmp_path):
    membership, client = member("operator")
    upload(client, build_test_model("multi_io", tmp_path / "a.onnx", seed=1))
    upload(client, build_test_model("multi_io", tmp_path / "b.onnx", seed=2))
    client.post("/api/v1/models/mlp/versions/1/promote", {"stage": "production"}, format="json")
    client.post("/api/v1/models/mlp/versions/2/promote", {"stage": "staging", "canary_weight": 30}, format="json")
    picks = [services.model_version_get(membership=membership, reference="mlp").number for _ in range(2000)]
    share = picks.count(2) / len(picks)
    assert 0.25 < share < 0.35


def test_developer_may_upload_but_not_promote_and_other_orgs_see_nothing(member, multi_io):
    _, client = member("developer")
    _, stranger = member("admin")
    upload(client, multi_io)
    assert (
        client.post("/api/v1/models/mlp/versions/1/promote", {"stage": "production"}, format="json").status_code == 403
    )
    assert stranger.get("/api/v1/models/mlp/").status_code == 404
    assert (
        stranger.post("/api/v1/models/mlp/versions/1/promote", {"stage": "production"}, format="json").status_code
        == 404
    )
    assert stranger.get("/api/v1/models/").json()["results"] == []


def test_cli_upload_and_list(member, multi_io):
    from apps.core.worker_process import current_database_url

    membership, _ = member("developer")
    env = {
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "DATABASE_URL": current_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PATH": "/usr/bin:/bin",
    }
    user = membership.user.username

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", "models", *args, "--as", user],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    uploaded = manage("upload", str(multi_io), "--name", "scorer")
    assert uploaded.returncode == 0, uploaded.stderr
    assert "registered scorer@1" in uploaded.stdout and "ids" in uploaded.stdout
    assert "scorer" in manage("list").stdout
    refused = manage("promote", "scorer@1", "--stage", "production")
    assert refused.returncode == 2 and "may not promote" in refused.stderr
    bad = manage("upload", str(multi_io.with_suffix(".missing")), "--name", "x")
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_uploaded_file_object_path_is_streamed(member, multi_io):
    membership, _ = member("developer")
    source = SimpleUploadedFile("m.onnx", multi_io.read_bytes())
    version, created = services.model_version_upload(membership=membership, name="streamed", source=source)
    assert created and Path(version.file.path).read_bytes() == multi_io.read_bytes()
    assert onnx.load(version.file.path).ir_version == 10


def test_the_model_list_is_a_summary_and_the_model_page_has_the_details(member, tmp_path):
    _, client = member("developer")
    upload(client, build_test_model("multi_io", tmp_path / "a.onnx", seed=1))
    listed = client.get("/api/v1/models/").json()["results"]
    assert [model["name"] for model in listed] == ["mlp"]
    assert "signature" not in listed[0]["versions"][0] and "report" not in listed[0]["versions"][0]
    detail = client.get("/api/v1/models/mlp/").json()
    assert {"signature", "report"} <= set(detail["versions"][0])
