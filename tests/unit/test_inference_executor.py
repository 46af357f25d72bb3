"""The inference executor without Django: batched runs against onnxruntime, progress, cancel, validation, cache."""

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from workers.inference import (
    CPU_PROVIDER,
    InferenceCancelled,
    InferenceError,
    InputValidationError,
    ModelChecksumMismatch,
    OutputNotBatched,
    SessionCache,
    choose_providers,
    coerce_inline_inputs,
    load_array_inputs,
    run_inference,
    validate_inputs,
)
from workers.onnx_models import TensorSpec
from workers.testing_models import build_test_model

MULTI_IO_INPUTS = [
    {"name": "x", "dtype": "float32", "shape": ["N", 4]},
    {"name": "ids", "dtype": "int64", "shape": ["N", 3]},
]


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def multi_io(tmp_path):
    path = build_test_model("multi_io", tmp_path / "multi_io.onnx")
    return path, sha256_of(path)


@pytest.fixture
def cache():
    return SessionCache(max_bytes=1 << 30, intra_op_threads=1)


def multi_io_inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((rows, 4), dtype=np.float32),
        "ids": rng.integers(-1000, 1000, (rows, 3), dtype=np.int64),
    }


def direct_run(path, inputs, names=None) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])
    names = names or [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


@pytest.mark.parametrize(("batch_size", "rows"), [(1, 1000), (3, 1000), (1000, 1000), (256, 1000), (5000, 1000)])
def test_batched_outputs_match_one_direct_onnxruntime_run(tmp_path, multi_io, cache, batch_size, rows):
    path, sha256 = multi_io
    inputs = multi_io_inputs(rows)

    summary = run_inference(
        path,
        sha256=sha256,
        inputs=inputs,
        batch_size=batch_size,
        split_rows=True,
        output_path=tmp_path / "out.npz",
        session_cache=cache,
    )

    expected = direct_run(path, inputs)
    with np.load(tmp_path / "out.npz", allow_pickle=False) as written:
        assert sorted(written.files) == ["ids_sum", "y"]
        np.testing.assert_allclose(written["y"], expected["y"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(written["ids_sum"], expected["ids_sum"])
        assert written["ids_sum"].dtype == np.int64
    assert summary["rows"] == rows
    assert summary["batches"] == -(-rows // batch_size)
    assert summary["batch_size"] == min(batch_size, rows)
    assert summary["outputs"] == {
        "y": {"shape": [rows, 8], "dtype": "float32"},
        "ids_sum": {"shape": [rows, 1], "dtype": "int64"},
    }
    assert summary["provider"] == CPU_PROVIDER
    assert summary["rows_per_s"] > 0
    assert summary["output_sha256"] == sha256_of(tmp_path / "out.npz")
    assert summary["output_size_bytes"] == (tmp_path / "out.npz").stat().st_size


def test_progress_is_reported_after_every_batch_and_ends_at_the_total(tmp_path, multi_io, cache):
    path, sha256 = multi_io
    calls = []

    run_inference(
        path,
        sha256=sha256,
        inputs=multi_io_inputs(10),
        batch_size=3,
        split_rows=True,
        output_path=tmp_path / "out.npz",
        on_progress=lambda done, total: calls.append((done, total)),
        session_cache=cache,
    )

    assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]


def test_cancellation_stops_after_the_first_batch_and_writes_nothing(tmp_path, multi_io, cache):
    path, sha256 = multi_io
    progress = []

    with pytest.raises(InferenceCancelled) as cancelled:
        run_inference(
            path,
            sha256=sha256,
            inputs=multi_io_inputs(10),
            batch_size=4,
            split_rows=True,
            output_path=tmp_path / "out.npz",
            on_progress=lambda done, total: progress.append(done),
            should_cancel=lambda: True,
            session_cache=cache,
        )

    assert (cancelled.value.rows_done, cancelled.value.rows_total) == (4, 10)
    assert progress == [4]
    assert list(tmp_path.glob("out*")) == []
    assert list(tmp_path.glob(".out*")) == []


def test_outputs_written_while_batches_run_hash_and_load_like_one_direct_run(tmp_path, multi_io, cache, monkeypatch):
    # A chunk of a few rows makes the writer stream the first output in many pieces.
    monkeypatch.setattr("workers.inference._NpzWriter.CHUNK_BYTES", 64)
    path, sha256 = multi_io
    inputs = multi_io_inputs(1001)
    np.savez(tmp_path / "in.npz", **inputs)

    summary = run_inference(
        path,
        sha256=sha256,
        inputs=load_array_inputs(tmp_path / "in.npz"),
        batch_size=7,
        split_rows=True,
        output_path=tmp_path / "out.npz",
        session_cache=cache,
    )

    assert summary["output_sha256"] == sha256_of(tmp_path / "out.npz")
    assert summary["output_size_bytes"] == (tmp_path / "out.npz").stat().st_size
    expected = direct_run(path, inputs)
    with np.load(tmp_path / "out.npz", allow_pickle=False) as written:
        np.testing.assert_allclose(written["y"], expected["y"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(written["ids_sum"], expected["ids_sum"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_wanted_outputs_subset_writes_only_those(tmp_path, multi_io, cache):
    path, sha256 = multi_io
    inputs = multi_io_inputs(7)

    summary = run_inference(
        path,
        sha256=sha256,
        inputs=inputs,
        batch_size=2,
        split_rows=True,
        wanted_outputs=["ids_sum"],
        output_path=tmp_path / "out.npz",
        session_cache=cache,
    )

    with np.load(tmp_path / "out.npz", allow_pickle=False) as written:
        assert written.files == ["ids_sum"]
        np.testing.assert_array_equal(written["ids_sum"], inputs["ids"].sum(axis=1, keepdims=True))
    assert list(summary["outputs"]) == ["ids_sum"]


def test_unknown_wanted_output_is_named(tmp_path, multi_io, cache):
    path, sha256 = multi_io

    with pytest.raises(InputValidationError) as error:
        run_inference(
            path,
            sha256=sha256,
            inputs=multi_io_inputs(2),
            batch_size=2,
            split_rows=True,
            wanted_outputs=["y", "logits"],
            output_path=tmp_path / "out.npz",
            session_cache=cache,
        )

    assert error.value.field == "wanted_outputs"
    assert "'logits'" in error.value.message
    assert "y, ids_sum" in error.value.message


def test_attention_model_runs_in_batches_like_one_direct_run(tmp_path, cache):
    path = build_test_model("attention", tmp_path / "attention.onnx")
    x = np.random.default_rng(1).standard_normal((10, 16, 64), dtype=np.float32)

    run_inference(
        path,
        sha256=sha256_of(path),
        inputs={"x": x},
        batch_size=4,
        split_rows=True,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    with np.load(tmp_path / "o.npz") as written:
        np.testing.assert_allclose(written["y"], direct_run(path, {"x": x})["y"], rtol=1e-5, atol=1e-5)


def test_model_file_changed_since_registration_is_refused(tmp_path, multi_io, cache):
    path, _ = multi_io

    with pytest.raises(ModelChecksumMismatch):
        run_inference(
            path,
            sha256="0" * 64,
            inputs=multi_io_inputs(2),
            batch_size=1,
            split_rows=True,
            output_path=tmp_path / "out.npz",
            session_cache=cache,
        )


def test_batch_size_below_one_is_refused(tmp_path, multi_io, cache):
    path, sha256 = multi_io

    with pytest.raises(InputValidationError) as error:
        run_inference(
            path,
            sha256=sha256,
            inputs=multi_io_inputs(2),
            batch_size=0,
            split_rows=True,
            output_path=tmp_path / "o.npz",
            session_cache=cache,
        )

    assert error.value.field == "batch_size"


# --- validation ------------------------------------------------------------------------------


def validation_error(inputs, signature=MULTI_IO_INPUTS) -> InputValidationError:
    with pytest.raises(InputValidationError) as error:
        validate_inputs(signature, inputs)
    return error.value


def test_valid_inputs_pass_with_dicts_or_tensor_specs():
    validate_inputs(MULTI_IO_INPUTS, multi_io_inputs(3))
    validate_inputs([TensorSpec.from_dict(spec) for spec in MULTI_IO_INPUTS], multi_io_inputs(3))


def test_missing_input_is_named_with_its_expected_dtype_and_shape():
    error = validation_error({"x": multi_io_inputs(2)["x"]})

    assert error.field == "ids"
    assert error.message == "missing input 'ids': the model expects int64 [N, 3]"


def test_unknown_input_is_named_with_what_the_model_takes():
    error = validation_error({**multi_io_inputs(2), "mask": np.ones((2, 3))})

    assert error.field == "mask"
    assert "'mask'" in error.message
    assert "x (float32 [N, 4])" in error.message
    assert "ids (int64 [N, 3])" in error.message


def test_wrong_dtype_names_input_expected_and_given_dtype():
    error = validation_error({**multi_io_inputs(2), "x": np.zeros((2, 4), dtype=np.float64)})

    assert error.field == "x"
    assert "float64" in error.message
    assert "expects float32" in error.message


def test_int32_ids_are_not_silently_widened():
    error = validation_error({**multi_io_inputs(2), "ids": np.zeros((2, 3), dtype=np.int32)})

    assert error.field == "ids"
    assert "int32" in error.message
    assert "int64" in error.message


def test_wrong_rank_names_expected_and_given_shape():
    error = validation_error({**multi_io_inputs(2), "x": np.zeros((2, 4, 1), dtype=np.float32)})

    assert error.field == "x"
    assert "[2, 4, 1] (rank 3)" in error.message
    assert "[N, 4] (rank 2)" in error.message


def test_fixed_dimension_mismatch_names_the_axis():
    error = validation_error({**multi_io_inputs(2), "x": np.zeros((2, 5), dtype=np.float32)})

    assert error.field == "x"
    assert "[2, 5]" in error.message
    assert "[N, 4]" in error.message
    assert "axis 1 must be 4, is 5" in error.message


def test_inputs_sharing_the_batch_dimension_must_agree_on_its_size():
    inputs = multi_io_inputs(3)
    inputs["ids"] = inputs["ids"][:2]

    error = validation_error(inputs)

    assert error.field == "ids"
    assert "'N'" in error.message
    assert "has 2" in error.message
    assert "'x' has 3" in error.message


def test_lists_are_refused_where_arrays_are_expected():
    error = validation_error({**multi_io_inputs(1), "x": [[1.0, 2.0, 3.0, 4.0]]})

    assert error.field == "x"
    assert "numpy array" in error.message


# --- inline JSON inputs ------------------------------------------------------------------------


def test_inline_lists_become_arrays_of_the_expected_dtypes():
    arrays = coerce_inline_inputs(MULTI_IO_INPUTS, {"x": [[1, 2, 3, 4.5]], "ids": [[1, 2, 3.0]]})

    assert arrays["x"].dtype == np.float32
    assert arrays["ids"].dtype == np.int64
    np.testing.assert_array_equal(arrays["ids"], [[1, 2, 3]])


@pytest.mark.parametrize(
    ("payload", "field", "fragment"),
    [
        ({"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3.5]]}, "ids", "3.5 at index (0, 2) is not a whole number"),
        ({"x": [[1, 2, 3, 4]], "ids": [[1, 2, 2**63]]}, "ids", "values must lie in"),
        ({"x": [[1, 2, 3, 4], [1, 2, 3]], "ids": [[1, 2, 3]]}, "x", "same length"),
        ({"x": [[None, 2, 3, 4]], "ids": [[1, 2, 3]]}, "x", "numbers only"),
        ({"x": [["a", "b", "c", "d"]], "ids": [[1, 2, 3]]}, "x", "got strings"),
        ({"x": [[1e39, 2, 3, 4]], "ids": [[1, 2, 3]]}, "x", "out of range for float32"),
        ({"x": [[1, 2, 3]], "ids": [[1, 2, 3]]}, "x", "axis 1 must be 4, is 3"),
        ({"x": [[1, 2, 3, 4]]}, "ids", "missing input 'ids'"),
        ({"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3]], "extra": [1]}, "extra", "unknown input 'extra'"),
    ],
)
def test_inline_inputs_that_would_lose_information_are_refused(payload, field, fragment):
    with pytest.raises(InputValidationError) as error:
        coerce_inline_inputs(MULTI_IO_INPUTS, payload)

    assert error.value.field == field
    assert fragment in error.value.message


def test_inline_inputs_run_end_to_end(tmp_path, multi_io, cache):
    path, sha256 = multi_io
    inputs = coerce_inline_inputs(
        MULTI_IO_INPUTS, {"x": [[1, -2, 3, -4], [0.5, 0, 0, 1]], "ids": [[1, 2, 3], [4, 5, 6]]}
    )

    run_inference(
        path,
        sha256=sha256,
        inputs=inputs,
        batch_size=1,
        split_rows=True,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    with np.load(tmp_path / "o.npz") as written:
        np.testing.assert_array_equal(written["ids_sum"], [[6], [15]])


# --- uploaded arrays ---------------------------------------------------------------------------


def test_npz_inputs_are_keyed_by_input_name(tmp_path):
    inputs = multi_io_inputs(5)
    np.savez(tmp_path / "inputs.npz", **inputs)

    loaded = load_array_inputs(tmp_path / "inputs.npz")

    assert sorted(loaded) == ["ids", "x"]
    np.testing.assert_array_equal(loaded["ids"], inputs["ids"])


def test_npy_input_feeds_a_single_input_model(tmp_path):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "x.npy", x)

    loaded = load_array_inputs(tmp_path / "x.npy", ["x"])

    np.testing.assert_array_equal(loaded["x"], x)


def test_npy_for_a_model_with_several_inputs_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 4), dtype=np.float32))

    with pytest.raises(InputValidationError) as error:
        load_array_inputs(tmp_path / "x.npy", ["x", "ids"])

    assert ".npz" in error.value.message


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)

    with pytest.raises(InputValidationError) as error:
        load_array_inputs(tmp_path / "objects.npy", ["x"])

    assert error.value.field == "inputs"


def test_npz_larger_than_the_limit_uncompressed_is_refused_before_reading(tmp_path):
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((1000, 1000), dtype=np.float32))

    with pytest.raises(InputValidationError) as error:
        load_array_inputs(tmp_path / "zeros.npz", max_bytes=1_000_000)

    assert "limit is 1000000 bytes" in error.value.message


def test_headers_only_gives_shapes_and_dtypes_without_reading_the_data(tmp_path):
    np.savez_compressed(tmp_path / "inputs.npz", x=np.ones((1000, 4), dtype=np.float32), ids=np.ones((1000, 3)))

    stand_ins = load_array_inputs(tmp_path / "inputs.npz", headers_only=True)

    assert stand_ins["x"].shape == (1000, 4) and stand_ins["x"].dtype == np.float32
    assert stand_ins["x"].strides == (0, 0) and not stand_ins["x"].flags.writeable
    with pytest.raises(InputValidationError) as error:
        validate_inputs(MULTI_IO_INPUTS, stand_ins)
    assert "input 'ids' has dtype float64" in error.value.message


def test_uploaded_npz_runs_end_to_end(tmp_path, multi_io, cache):
    path, sha256 = multi_io
    inputs = multi_io_inputs(50)
    np.savez(tmp_path / "inputs.npz", **inputs)

    run_inference(
        path,
        sha256=sha256,
        inputs=load_array_inputs(tmp_path / "inputs.npz"),
        batch_size=16,
        split_rows=True,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    with np.load(tmp_path / "o.npz") as written:
        np.testing.assert_allclose(written["y"], direct_run(path, inputs)["y"], rtol=1e-6, atol=1e-6)


# --- sessions and providers ---------------------------------------------------------------------


def test_cache_evicts_least_recently_used_models_by_bytes(tmp_path):
    models = {}
    for seed in range(3):
        path = build_test_model("multi_io", tmp_path / f"m{seed}.onnx", seed=seed)
        models[seed] = (path, sha256_of(path))
    size = models[0][0].stat().st_size
    cache = SessionCache(max_bytes=2 * size + size // 2, intra_op_threads=1)
    providers = [CPU_PROVIDER]

    first = cache.get_session(*models[0], providers)
    cache.get_session(*models[1], providers)
    assert cache.get_session(*models[0], providers) is first  # a hit, and now the most recent
    cache.get_session(*models[2], providers)  # over budget: evicts model 1, the least recent

    assert (models[0][1], (CPU_PROVIDER,)) in cache
    assert (models[1][1], (CPU_PROVIDER,)) not in cache
    assert (models[2][1], (CPU_PROVIDER,)) in cache
    assert len(cache) == 2
    assert cache.total_bytes == 2 * size


def test_model_larger_than_the_cache_runs_uncached(multi_io):
    path, sha256 = multi_io
    cache = SessionCache(max_bytes=10, intra_op_threads=1)

    session = cache.get_session(path, sha256, [CPU_PROVIDER])

    assert session.get_providers()[0] == CPU_PROVIDER
    assert len(cache) == 0
    assert cache.total_bytes == 0


def test_cache_keys_are_model_hash_and_providers(multi_io):
    # A model loaded for CPU must not be handed to a job that asked for CUDA, or back.
    path, sha256 = multi_io
    cache = SessionCache(max_bytes=1 << 20, intra_op_threads=1)

    cache.get_session(path, sha256, [CPU_PROVIDER])

    assert (sha256, (CPU_PROVIDER,)) in cache
    assert (sha256, ("CUDAExecutionProvider", CPU_PROVIDER)) not in cache


def test_cpu_preference_never_asks_for_cuda():
    assert choose_providers("cpu") == [CPU_PROVIDER]


@pytest.mark.parametrize("preference", ["gpu", "auto"])
def test_gpu_and_auto_put_cuda_first_only_where_it_is_installed(preference):
    providers = choose_providers(preference)

    assert providers[-1] == CPU_PROVIDER
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers == ["CUDAExecutionProvider", CPU_PROVIDER]
    else:
        assert providers == [CPU_PROVIDER]


def test_unknown_device_preference_is_refused():
    with pytest.raises(InputValidationError) as error:
        choose_providers("tpu")

    assert error.value.field == "device_preference"


def test_worker_modules_import_no_django_and_create_no_session():
    # A gpu worker's prefork parent imports these modules: importing must neither pull in
    # Django nor create an onnxruntime session (no CUDA before the fork).
    code = (
        "import sys, onnxruntime\n"
        "created = []\n"
        "original = onnxruntime.InferenceSession.__init__\n"
        "def spy(self, *a, **k):\n"
        "    created.append(a)\n"
        "    original(self, *a, **k)\n"
        "onnxruntime.InferenceSession.__init__ = spy\n"
        "import workers.inference, workers.onnx_models, workers.testing_models, workers.inference_bench\n"
        "assert 'django' not in sys.modules, 'django imported'\n"
        "assert not created, created\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def single_node_model(tmp_path, node, output_shape, initializer=()) -> tuple:
    graph = helper.make_graph(
        [node],
        node.op_type,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        initializer=list(initializer),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / f"{node.op_type}.onnx"
    onnx.save_model(model, str(path))
    return path, sha256_of(path)


def test_onnxruntime_failure_at_run_time_names_the_rows_and_the_reason(tmp_path, cache):
    # Reshape to exactly 4 values: impossible for a batch of 2 rows (8 values).
    shape = numpy_helper.from_array(np.array([4], dtype=np.int64), "shape")
    path, sha256 = single_node_model(tmp_path, helper.make_node("Reshape", ["x", "shape"], ["y"]), [4], [shape])

    with pytest.raises(InferenceError) as error:
        run_inference(
            path,
            sha256=sha256,
            inputs={"x": np.zeros((3, 4), dtype=np.float32)},
            batch_size=2,
            split_rows=True,
            output_path=tmp_path / "o.npz",
            session_cache=cache,
        )

    assert error.value.code == "inference_failed"
    assert "rows 0 to 1" in error.value.message
    assert "cannot be reshaped" in error.value.message
    assert "onnxruntime_src" not in error.value.message


def test_output_that_does_not_follow_the_batch_axis_is_refused_when_batching(tmp_path, cache):
    path, sha256 = single_node_model(tmp_path, helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0), [])
    inputs = {"x": np.ones((3, 4), dtype=np.float32)}

    with pytest.raises(OutputNotBatched) as error:
        run_inference(
            path,
            sha256=sha256,
            inputs=inputs,
            batch_size=2,
            split_rows=True,
            output_path=tmp_path / "o.npz",
            session_cache=cache,
        )
    summary = run_inference(
        path,
        sha256=sha256,
        inputs=inputs,
        batch_size=3,
        split_rows=True,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    assert "output 'y'" in error.value.message
    assert summary["outputs"] == {"y": {"shape": [], "dtype": "float32"}}


def test_threads_asking_for_the_same_cold_model_load_it_once(multi_io):
    path, sha256 = multi_io
    loads = []

    class CountingCache(SessionCache):
        def _load(self, *args):
            loads.append(args)
            return super()._load(*args)

    cache = CountingCache(max_bytes=1 << 20, intra_op_threads=1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sessions = list(pool.map(lambda _: cache.get_session(path, sha256, [CPU_PROVIDER]), range(16)))

    assert len(loads) == 1
    assert all(session is sessions[0] for session in sessions)


def test_string_outputs_are_stored_as_fixed_width_unicode_after_the_numeric_ones(tmp_path, cache):
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["label"], to=TensorProto.STRING), helper.make_node("Neg", ["x"], ["y"])],
        "labels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.STRING, ["N", 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "labels.onnx"
    onnx.save_model(model, str(path))
    x = np.arange(40, dtype=np.float32).reshape(10, 4) * 1.5

    summary = run_inference(
        path,
        sha256=sha256_of(path),
        inputs={"x": x},
        batch_size=3,
        split_rows=True,
        output_path=tmp_path / "o.npz",
        session_cache=cache,
    )

    assert summary["outputs"] == {
        "label": {"shape": [10, 4], "dtype": "string"},
        "y": {"shape": [10, 4], "dtype": "float32"},
    }
    expected = direct_run(path, {"x": x})
    with np.load(tmp_path / "o.npz", allow_pickle=False) as written:
        assert written["label"].dtype.kind == "U"
        np.testing.assert_array_equal(written["label"], expected["label"].astype(str))
        np.testing.assert_array_equal(written["y"], -x)


def test_the_executor_benchmark_runs_the_executor_in_batches_as_a_job_does(tmp_path):
    # `python -m workers.inference_bench` compared a batched bare loop with one whole call
    # once the executor stopped splitting rows by default: its "loop ratio" measured nothing.
    from workers.inference_bench import bench_bare_vs_executor

    model = build_test_model("multi_io", tmp_path / "m.onnx")

    result = bench_bare_vs_executor(model, batch_size=8, rows=64, repeats=1)

    assert result["batches"] == 8
