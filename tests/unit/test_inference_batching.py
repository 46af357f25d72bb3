"""Batching that cannot change answers: the upload-time probe, unsplit runs, scalars, 0 rows, no batch axis."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from workers.inference import SessionCache, run_inference
from workers.onnx_models import inspect_model
from workers.testing_models import build_test_model

MAX_BYTES = 50 * 1024 * 1024


@pytest.fixture
def cache():
    return SessionCache(max_bytes=1 << 30, intra_op_threads=1)


def save(tmp_path, name, nodes, inputs, outputs, initializer=()) -> tuple:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def batch_mixing_model(tmp_path) -> tuple:
    """Softmax over the batch axis, and each row centred on the batch mean: rows depend on each other."""
    return save(
        tmp_path,
        "mixing",
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=0),
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["centred"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("centred", TensorProto.FLOAT, ["N", 4]),
        ],
    )


def direct(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(session.get_outputs(), session.run(None, feeds), strict=True)}


def test_probe_finds_rows_that_mix_along_the_batch_axis(tmp_path):
    path, _ = batch_mixing_model(tmp_path)

    batching = inspect_model(path, max_bytes=MAX_BYTES).batching

    assert batching["batch_axis"] is True
    assert batching["rows_independent"] is False
    assert batching["split"] is False
    assert "'p'" in batching["reason"] or "'centred'" in batching["reason"]


def test_probe_lets_independent_rows_be_split(tmp_path):
    batching = inspect_model(build_test_model("multi_io", tmp_path / "m.onnx"), max_bytes=MAX_BYTES).batching

    assert batching == {
        "batch_axis": True,
        "rows_independent": True,
        "split": True,
        "zero_rows": True,
        "reason": "rows are independent: a batch and its rows one by one give the same outputs",
    }


def test_model_mixing_rows_run_with_a_small_batch_size_gives_the_unsplit_answer(tmp_path, cache):
    # Finding 1: 1,000 rows at batch_size 256 came back split, wrong, and "succeeded".
    path, sha256 = batch_mixing_model(tmp_path)
    split = inspect_model(path, max_bytes=MAX_BYTES).batching["split"]
    x = np.random.default_rng(3).standard_normal((1000, 4), dtype=np.float32)

    summary = run_inference(
        path,
        sha256=sha256,
        inputs={"x": x},
        batch_size=256,
        split_rows=split,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    outputs = np.load(tmp_path / "o.npz")
    expected = direct(path, {"x": x})
    assert summary["batches"] == 1
    np.testing.assert_allclose(outputs["p"], expected["p"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs["p"].sum(axis=0), np.ones(4), rtol=1e-4)
    np.testing.assert_allclose(outputs["centred"], expected["centred"], rtol=1e-6, atol=1e-6)


def test_executor_does_not_split_unless_told_the_rows_are_independent(tmp_path, cache):
    path, sha256 = batch_mixing_model(tmp_path)
    x = np.random.default_rng(3).standard_normal((40, 4), dtype=np.float32)

    summary = run_inference(
        path, sha256=sha256, inputs={"x": x}, batch_size=8, output_path=tmp_path / "o.npz", session_cache=cache
    )

    assert summary["batches"] == 1
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["p"], direct(path, {"x": x})["p"], rtol=1e-6)


def scalar_model(tmp_path) -> tuple:
    return save(
        tmp_path,
        "scalar",
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )


def test_scalar_output_is_written_with_its_true_shape(tmp_path, cache):
    # Finding 2: the .npz held shape (1,) while the result said [].
    path, sha256 = scalar_model(tmp_path)

    summary = run_inference(
        path,
        sha256=sha256,
        inputs={"x": np.array(3.0, dtype=np.float32)},
        batch_size=256,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    y = np.load(tmp_path / "o.npz")["y"]
    assert summary["outputs"]["y"]["shape"] == [] == list(y.shape)
    assert y == np.float32(9.0)


def test_scalar_model_has_no_batch_axis_and_is_never_split(tmp_path):
    path, _ = scalar_model(tmp_path)

    batching = inspect_model(path, max_bytes=MAX_BYTES).batching

    assert batching["batch_axis"] is False and batching["split"] is False
    assert "no batch axis" in batching["reason"]


def test_fixed_shape_model_without_a_batch_axis_runs_whole_with_its_true_shapes(tmp_path, cache):
    path, sha256 = save(
        tmp_path,
        "fixed",
        [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 3])],
    )
    batching = inspect_model(path, max_bytes=MAX_BYTES).batching
    x = np.arange(15, dtype=np.float32).reshape(3, 5)

    summary = run_inference(
        path,
        sha256=sha256,
        inputs={"x": x},
        batch_size=1,
        split_rows=batching["split"],
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    assert batching["batch_axis"] is False
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["y"], x.T)
    assert summary["outputs"]["y"]["shape"] == [5, 3]


def test_zero_rows_run_and_come_back_with_zero_rows(tmp_path, cache):
    # Finding 3: 0-row inputs passed submit and failed in the worker ("the inputs have no rows").
    path = build_test_model("multi_io", tmp_path / "m.onnx")
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    inputs = {"x": np.zeros((0, 4), dtype=np.float32), "ids": np.zeros((0, 3), dtype=np.int64)}

    summary = run_inference(
        path,
        sha256=sha256,
        inputs=inputs,
        batch_size=8,
        split_rows=True,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    outputs = np.load(tmp_path / "o.npz")
    assert summary["rows"] == 0
    assert outputs["y"].shape == (0, 8) and outputs["ids_sum"].shape == (0, 1)
    assert summary["outputs"]["y"]["shape"] == [0, 8]


def test_probe_records_a_model_that_cannot_run_zero_rows(tmp_path):
    # Reshape to a fixed 4 values: fine for one row, impossible for none.
    shape = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")
    path, _ = save(
        tmp_path,
        "one_row_only",
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [shape],
    )

    batching = inspect_model(path, max_bytes=MAX_BYTES).batching

    assert batching["zero_rows"] is False
    assert batching["split"] is False
