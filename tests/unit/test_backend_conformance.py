"""Conformance: every ONNX backend test case bare onnxruntime passes gives the same outputs through the executor.

Each case goes through what an upload does (`inspect_model`: checks, runtime load, the
batching probe) and then `run_inference` at batch_size 1, so every model the probe lets be
split is split as far as it goes. A wrong output fails the test; a refusal is allowed but
must say why, and all refusals are listed in the output (`pytest -s`).
"""

import hashlib

import numpy as np

from tests.backend_cases import all_cases, bare_onnxruntime_passes, outputs_match
from workers.inference import InferenceError, SessionCache, run_inference
from workers.onnx_models import ModelValidationError, inspect_model

MAX_BYTES = 50 * 1024 * 1024


def run_case(case, tmp_path, cache) -> tuple[str, str]:
    """("passed" | "refused" | "wrong", detail) for one case through upload checks and the executor."""
    try:
        info = inspect_model(case.model_path, max_bytes=MAX_BYTES)
    except ModelValidationError as exc:
        return "refused", f"upload: {exc.code}: {exc.message}"
    sha256 = hashlib.sha256(case.model_path.read_bytes()).hexdigest()
    names = [spec.name for spec in info.inputs]
    for index, data in enumerate(case.data_sets()):
        output_path = tmp_path / f"{case.name}-{index}.npz"
        try:
            run_inference(
                case.model_path,
                sha256=sha256,
                inputs=dict(zip(names, data.inputs, strict=False)),
                batch_size=1,
                split_rows=info.batching["split"],
                output_path=output_path,
                session_cache=cache,
            )
        except InferenceError as exc:
            return "refused", f"run: {exc.code}: {exc.message}"
        with np.load(output_path, allow_pickle=False) as stored:
            got = [stored[spec.name] for spec in info.outputs]
        for spec, value, expected in zip(info.outputs, got, data.outputs, strict=True):
            problem = outputs_match(value, expected)
            if problem:
                return "wrong", f"output {spec.name!r} of data set {index}: {problem} (batching {info.batching})"
    return "passed", ""


def test_every_backend_case_onnxruntime_passes_gives_the_same_outputs_through_the_executor(tmp_path):
    cases = [case for case in all_cases() if bare_onnxruntime_passes(case)]
    cache = SessionCache(max_bytes=1 << 30, intra_op_threads=1)

    outcomes = {case.id: run_case(case, tmp_path, cache) for case in cases}

    refused = {case: detail for case, (status, detail) in outcomes.items() if status == "refused"}
    wrong = {case: detail for case, (status, detail) in outcomes.items() if status == "wrong"}
    passed = [case for case, (status, _) in outcomes.items() if status == "passed"]
    print(f"\nbackend conformance: {len(passed)} passed, {len(refused)} refused, {len(wrong)} wrong of {len(cases)}")
    for case, detail in sorted(refused.items()):
        print(f"  refused {case}: {detail}")
    assert not wrong, wrong
    assert all(detail.strip() for detail in refused.values())
    # onnx 1.23 + onnxruntime 1.31: 100 cases bare onnxruntime passes (measured).
    assert len(cases) >= 100
    assert len(passed) >= 0.95 * len(cases), sorted(refused.items())


def test_every_backend_case_onnxruntime_cannot_run_is_refused_at_upload_with_its_reason():
    refused = {}
    for case in all_cases():
        if bare_onnxruntime_passes(case):
            continue
        try:
            info = inspect_model(case.model_path, max_bytes=MAX_BYTES)
        except ModelValidationError as exc:
            refused[case.id] = exc
            continue
        # Loaded but gives other numbers bare (e.g. a locale the host lacks): not ours to refuse.
        assert info.inputs is not None

    print(f"\nrefused at upload: {len(refused)}")
    for case, exc in sorted(refused.items()):
        print(f"  {case}: {exc.code}: {exc.message[:200]}")
    assert refused, "onnx 1.23 ships cases onnxruntime 1.31 has no kernels for (opset-6 AveragePool, ...)"
    for exc in refused.values():
        assert exc.message.strip() and "onnxruntime_src" not in exc.message
        if "Could not find an implementation" in exc.message:
            assert "onnx.version_converter" in exc.message
