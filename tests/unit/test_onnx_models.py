"""Upload-time inspection of ONNX models: the signature of a good model, and a precise refusal for each bad one."""

import hashlib
import random
import re

import onnx
import pytest
from onnx import TensorProto, helper

from workers.onnx_models import ModelInfo, ModelValidationError, TensorSpec, inspect_model, runtime_limits
from workers.testing_models import build_test_model

MAX_BYTES = 50 * 1024 * 1024


def refusal(path, *, max_bytes: int = MAX_BYTES) -> ModelValidationError:
    with pytest.raises(ModelValidationError) as caught:
        inspect_model(path, max_bytes=max_bytes)
    return caught.value


def test_multi_io_model_signature_names_dtypes_and_symbolic_batch_axis(tmp_path):
    path = build_test_model("multi_io", tmp_path / "multi_io.onnx")

    info = inspect_model(path, max_bytes=MAX_BYTES)

    assert isinstance(info, ModelInfo)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size_bytes == path.stat().st_size
    assert info.ir_version == 10
    assert info.opset == 17
    assert info.producer == "switchyard-tests 1"
    assert info.inputs == [
        TensorSpec("x", "float32", ["N", 4]),
        TensorSpec("ids", "int64", ["N", 3]),
    ]
    assert info.outputs == [
        TensorSpec("y", "float32", ["N", 8]),
        TensorSpec("ids_sum", "int64", ["N", 1]),
    ]


def test_model_info_is_plain_data_for_a_json_field(tmp_path):
    info = inspect_model(build_test_model("multi_io", tmp_path / "m.onnx"), max_bytes=MAX_BYTES)

    data = info.to_dict()

    assert data["inputs"][0] == {"name": "x", "dtype": "float32", "shape": ["N", 4]}
    assert TensorSpec.from_dict(data["outputs"][1]) == info.outputs[1]


@pytest.mark.parametrize(
    ("kind", "input_shape", "output_shape"),
    [("mlp", ["N", 384], ["N", 384]), ("attention", ["N", 16, 64], ["N", 16, 64])],
)
def test_benchmark_models_pass_every_check(tmp_path, kind, input_shape, output_shape):
    info = inspect_model(build_test_model(kind, tmp_path / f"{kind}.onnx"), max_bytes=MAX_BYTES)

    assert info.inputs == [TensorSpec("x", "float32", input_shape)]
    assert info.outputs == [TensorSpec("y", "float32", output_shape)]


def test_attention_model_can_have_a_symbolic_sequence_axis(tmp_path):
    info = inspect_model(build_test_model("attention", tmp_path / "a.onnx", seq_len=None), max_bytes=MAX_BYTES)

    assert info.inputs == [TensorSpec("x", "float32", ["N", "S", 64])]


def test_random_bytes_are_not_onnx(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(random.Random(0).randbytes(4096))

    error = refusal(path)

    assert error.code == "not_onnx"
    assert "not an ONNX model" in error.message


def test_text_file_is_not_onnx(tmp_path):
    path = tmp_path / "readme.onnx"
    path.write_text("hello, this is not a model\n")

    assert refusal(path).code == "not_onnx"


def test_empty_file_is_not_onnx(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")

    error = refusal(path)

    assert (error.code, error.message) == ("not_onnx", "the file is empty")


@pytest.mark.parametrize("kind", ["multi_io", "mlp"])
def test_model_cut_in_half_is_truncated_and_says_where(tmp_path, kind):
    data = build_test_model(kind, tmp_path / "whole.onnx").read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])

    error = refusal(path)

    assert error.code == "truncated"
    assert re.search(r"field 'graph' at byte \d+ declares \d+ bytes but only \d+ remain", error.message)


def _with_external_initializer(tmp_path, location: str):
    model = onnx.load(str(build_test_model("multi_io", tmp_path / "source.onnx")))
    weight = next(tensor for tensor in model.graph.initializer if tensor.name == "W")
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "128")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path))
    return path


def test_external_data_pointing_outside_the_upload_is_refused_naming_tensor_and_location(tmp_path):
    error = refusal(_with_external_initializer(tmp_path, "../outside.bin"))

    assert error.code == "external_data"
    assert "'W'" in error.message
    assert "'../outside.bin'" in error.message
    assert error.details == {"tensor": "W", "location": "../outside.bin"}


def test_external_data_beside_the_model_is_refused_too(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 128)

    error = refusal(_with_external_initializer(tmp_path, "weights.bin"))

    assert error.code == "external_data"
    assert "'weights.bin'" in error.message


def test_model_saved_by_onnx_with_external_data_is_refused(tmp_path):
    model = onnx.load(str(build_test_model("mlp", tmp_path / "mlp.onnx")))
    path = tmp_path / "exported" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.data", size_threshold=0)

    error = refusal(path)

    assert error.code == "external_data"
    assert "'model.data'" in error.message


def test_external_data_inside_a_constant_node_is_found(tmp_path):
    value = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=value)],
        "constant",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "constant.onnx"
    onnx.save_model(model, str(path))

    error = refusal(path)

    assert error.code == "external_data"
    assert "'/etc/passwd'" in error.message


def test_future_ir_version_is_refused_with_given_and_supported_versions(tmp_path):
    error = refusal(build_test_model("multi_io", tmp_path / "ir99.onnx", ir_version=99))

    limit = runtime_limits().max_ir_version
    assert error.code == "unsupported_ir_version"
    assert "IR version 99" in error.message
    assert f"up to {limit}" in error.message
    assert error.details == {"ir_version": 99, "max_ir_version": limit}


# onnx 1.23 stamps IR 14; onnxruntime 1.31 loads up to 13 (docs: GPU.md "Pitfalls").
@pytest.mark.skipif(
    runtime_limits().max_ir_version >= onnx.IR_VERSION, reason="the installed onnxruntime loads what this onnx writes"
)
def test_ir_version_onnx_writes_by_default_is_refused_when_onnxruntime_is_behind(tmp_path):
    path = build_test_model("multi_io", tmp_path / "default_ir.onnx", ir_version=onnx.IR_VERSION)

    assert refusal(path).code == "unsupported_ir_version"


@pytest.mark.parametrize("opset", [99, "next"])
def test_future_opset_is_refused_with_given_and_supported_opsets(tmp_path, opset):
    limits = runtime_limits()
    opset = limits.max_opset + 1 if opset == "next" else opset

    error = refusal(build_test_model("multi_io", tmp_path / "future.onnx", opset=opset))

    assert error.code == "unsupported_opset"
    assert f"opset {opset}" in error.message
    assert f"to {limits.max_opset}" in error.message


def test_old_opset_that_onnxruntime_loads_is_accepted(tmp_path):
    # Issue 20: 77 backend test models were refused for opset 6 although onnxruntime runs them.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "old_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    onnx.save_model(model, str(tmp_path / "old.onnx"))

    info = inspect_model(tmp_path / "old.onnx", max_bytes=MAX_BYTES)

    assert info.opset == 6 and info.ir_version == 3
    assert info.batching["split"] is True


def test_old_opset_onnxruntime_has_no_kernel_for_is_refused_with_how_to_convert_it(tmp_path):
    # onnxruntime 1.31 has no opset-6 kernel for AvgPool: the runtime load decides, and says how to fix it.
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2])],
        "old_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    path = tmp_path / "old_pool.onnx"
    onnx.save_model(model, str(path))

    error = refusal(path)

    assert error.code == "runtime_load_failed"
    assert "AveragePool" in error.message
    assert "onnx.version_converter" in error.message


def test_runtime_limits_are_read_from_the_installed_onnxruntime():
    limits = runtime_limits()

    assert limits.source == "probe"
    # onnxruntime 1.31: IR 13 and opset 26 (measured); newer releases only raise them.
    assert limits.max_ir_version >= 13
    assert limits.max_opset >= 26


def test_too_large_model_is_refused_before_it_is_read(tmp_path):
    path = build_test_model("mlp", tmp_path / "mlp.onnx")

    error = refusal(path, max_bytes=1000)

    assert error.code == "too_large"
    assert str(path.stat().st_size) in error.message
    assert "1000 bytes" in error.message


def test_checker_failure_says_what_the_checker_found(tmp_path):
    model = onnx.load(str(build_test_model("multi_io", tmp_path / "m.onnx")))
    model.graph.node[0].input[1] = "missing_weight"
    path = tmp_path / "broken.onnx"
    onnx.save_model(model, str(path))

    error = refusal(path)

    assert error.code == "checker_failed"
    assert "missing_weight" in error.message
    assert "\n" not in error.message


def test_model_onnxruntime_cannot_load_gives_onnxruntimes_reason(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 10
    path = tmp_path / "custom.onnx"
    onnx.save_model(model, str(path))

    error = refusal(path)

    assert error.code == "runtime_load_failed"
    assert "com.example:Frobnicate" in error.message
    assert "onnxruntime_src" not in error.message  # the C++ source location stays in details
    assert "onnxruntime_error" in error.details


def test_sequence_input_is_refused_as_unsupported_signature(tmp_path):
    sequence = helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["xs"], ["n"])],
        "sequence",
        [sequence],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "sequence.onnx"
    onnx.save_model(model, str(path))

    error = refusal(path)

    assert error.code == "unsupported_signature"
    assert "'xs'" in error.message


def test_inspection_leaves_no_files_behind(tmp_path):
    path = build_test_model("multi_io", tmp_path / "m.onnx")
    before = sorted(tmp_path.rglob("*"))

    inspect_model(path, max_bytes=MAX_BYTES)
    refusal(path, max_bytes=10)

    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("shape", [[1_000_000, 1_000_000], [2**62], ["N", 2**40]])
def test_fixed_input_dimensions_too_large_for_one_row_are_refused_at_upload(tmp_path, shape):
    # Finding 7 of issue 20: 1e6 x 1e6 and 2^62 inputs were accepted, and compiling one crashed.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save_model(model, str(tmp_path / "huge.onnx"))

    error = refusal(tmp_path / "huge.onnx")

    assert error.code == "input_too_large"
    assert "'x'" in error.message and "one row" in error.message


def test_commands_the_api_and_the_admin_start_without_importing_onnx():
    # `import onnx` takes ~0.6 s (ml_dtypes): a command that names a TensorSpec or a compile
    # target must not pay it at every start (manage.py jobs --help went from 2.45 s to 1.9 s).
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys, django; django.setup()\n"
        "import apps.registry.admin, apps.registry.api.views, apps.registry.management.commands.models\n"
        "import apps.jobs.kinds, apps.registry.services, workers.onnx_models\n"
        "print(sorted({'onnx', 'ml_dtypes', 'workers.compile'} & set(sys.modules)))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    found = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stderr[-2000:]
