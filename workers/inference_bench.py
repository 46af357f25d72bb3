"""Measures the inference executor against a bare onnxruntime `session.run` loop on the same model and batch."""

import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from workers.inference import SessionCache, choose_providers, run_inference, session_signature
from workers.onnx_models import TensorSpec


def bench_bare_vs_executor(
    model_path: Path,
    batch_size: int,
    rows: int,
    *,
    repeats: int = 3,
    device_preference: str = "cpu",
    intra_op_threads: int | None = None,
    seed: int = 0,
) -> dict:
    """Rows/s of a bare `session.run` loop and of `run_inference`, same session, inputs and batch size.

    Both use one session (created once, warmed up), so the ratio is the executor's own
    cost: validation, slicing, copying outputs into place, progress and cancellation
    checks, writing and hashing the .npz. Runs alternate, bare then executor, `repeats`
    times, and each side keeps its best run: on a shared host, interference only ever
    slows a run down, so the fastest is the closest to the code's own cost.
    """
    model_path = Path(model_path)
    sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    providers = choose_providers(device_preference)
    cache = SessionCache(max_bytes=1 << 40, intra_op_threads=intra_op_threads)
    session = cache.get_session(model_path, sha256, providers)
    input_specs, _ = session_signature(session)
    inputs = _random_inputs(input_specs, rows, np.random.default_rng(seed))
    session.run(None, {name: array[:batch_size] for name, array in inputs.items()})  # warm-up: first-run allocations

    def bare() -> float:
        started = time.perf_counter()
        for start in range(0, rows, batch_size):
            session.run(None, {name: array[start : start + batch_size] for name, array in inputs.items()})
        return time.perf_counter() - started

    bare_seconds, executor_seconds, loop_seconds = [], [], []
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as directory:
        for attempt in range(repeats):
            bare_seconds.append(bare())
            started = time.perf_counter()
            summary = run_inference(
                model_path,
                sha256=sha256,
                inputs=inputs,
                batch_size=batch_size,
                # What a job passes for a model the upload probe found row-independent (the test
                # MLP): without it the executor runs the whole input in one call, not in batches.
                split_rows=True,
                output_path=Path(directory) / f"out-{attempt}.npz",
                device_preference=device_preference,
                on_progress=lambda done, total: None,
                should_cancel=lambda: False,
                session_cache=cache,
            )
            executor_seconds.append(time.perf_counter() - started)
            loop_seconds.append(summary["seconds"])
    bare_rate = rows / min(bare_seconds)
    executor_rate = rows / min(executor_seconds)
    loop_rate = rows / min(loop_seconds)
    return {
        "model": model_path.name,
        "batch_size": batch_size,
        "rows": rows,
        "repeats": repeats,
        "provider": summary["provider"],
        "batches": summary["batches"],
        "bare_rows_per_s": round(bare_rate, 1),
        # End to end: everything run_inference does, writing and hashing the output included.
        "executor_rows_per_s": round(executor_rate, 1),
        "ratio": round(executor_rate / bare_rate, 3),
        # The batch loop alone (the summary's `seconds`), comparable with the bare loop.
        "executor_loop_rows_per_s": round(loop_rate, 1),
        "loop_ratio": round(loop_rate / bare_rate, 3),
        "bare_seconds_median": round(statistics.median(bare_seconds), 4),
        "executor_seconds_median": round(statistics.median(executor_seconds), 4),
    }


def _random_inputs(specs: list[TensorSpec], rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Symbolic or unknown dims become `rows` on the first axis and 1 elsewhere.
    arrays = {}
    for spec in specs:
        shape = [
            dim if isinstance(dim, int) else (rows if axis == 0 else 1) for axis, dim in enumerate(spec.shape or [rows])
        ]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[spec.name] = rng.integers(0, 100, shape).astype(dtype)
        else:
            arrays[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return arrays


def main() -> None:
    from workers.testing_models import build_test_model

    # Rows per batch size keep each run near half a second on a 2-core host (measured:
    # ~1.7 k rows/s at batch 1, ~22 k rows/s at 32 and 256), the whole bench under 30 s.
    plan = {1: 1000, 32: 8192, 256: 8192}
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as directory:
        model_path = build_test_model("mlp", Path(directory) / "mlp.onnx")
        print(f"{'batch':>5} {'rows':>6} {'bare rows/s':>12} {'executor rows/s':>16} {'ratio':>6} {'loop ratio':>10}")
        for batch_size, rows in plan.items():
            result = bench_bare_vs_executor(model_path, batch_size, rows, repeats=5)
            print(
                f"{batch_size:>5} {rows:>6} {result['bare_rows_per_s']:>12.1f} {result['executor_rows_per_s']:>16.1f} "
                f"{result['ratio']:>6.3f} {result['loop_ratio']:>10.3f}"
            )


if __name__ == "__main__":
    main()
