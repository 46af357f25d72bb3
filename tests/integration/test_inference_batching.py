"""The batching rule at the registry and at submit: the probe is stored; 0 rows a model cannot run are refused."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from apps.jobs.models import Job
from workers.testing_models import build_test_model

pytestmark = pytest.mark.django_db(transaction=True)


def save(tmp_path, name, nodes, inputs, outputs, initializer=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path


def upload_and_promote(client, path, name):
    with path.open("rb") as handle:
        response = client.post("/api/v1/models/", {"file": handle, "name": name}, format="multipart")
    assert response.status_code == 201, response.json()
    promoted = client.post(f"/api/v1/models/{name}/versions/1/promote", {"stage": "production"}, format="json")
    assert promoted.status_code == 200
    return response.json()


def test_upload_stores_whether_rows_may_be_split(member, tmp_path):
    _, client = member("owner")
    mixing = save(
        tmp_path,
        "mixing",
        [helper.make_node("Softmax", ["x"], ["p"], axis=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 4])],
    )

    mixed = upload_and_promote(client, mixing, "mixing")
    independent = upload_and_promote(client, build_test_model("multi_io", tmp_path / "m.onnx"), "scorer")

    assert mixed["batching"]["split"] is False and mixed["batching"]["rows_independent"] is False
    assert independent["batching"]["split"] is True


def test_zero_rows_for_a_model_that_cannot_run_them_are_refused_at_submit(member, tmp_path):
    _, client = member("owner")
    shape = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")
    path = save(
        tmp_path,
        "one_row",
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [shape],
    )
    upload_and_promote(client, path, "one-row")

    response = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "one-row", "inputs": {"x": []}}}, format="json"
    )

    assert response.status_code == 400, response.json()
    assert "0 rows" in " ".join(response.json()["fields"]["params.inputs"])
    assert Job.objects.count() == 0


def test_zero_rows_for_a_model_that_runs_them_are_accepted(member, tmp_path):
    _, client = member("owner")
    upload_and_promote(client, build_test_model("multi_io", tmp_path / "m.onnx"), "scorer")

    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer", "inputs": {"x": [], "ids": []}}},
        format="json",
    )

    assert response.status_code == 201, response.json()
