"""Compiles an ONNX model for a target (optimised graph, dynamic int8, float16) and validates it against the source.

Plain functions over paths and arrays: no Django, so the same code runs on a gpu host
(or the device machine) as in tests. Everything uses what ships inside the onnxruntime
wheel (`onnxruntime.quantization`, `onnxruntime.transformers.float16`): no extra
dependency, and the converter always matches the runtime that will load its output.
"""

import contextlib
import hashlib
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from workers.compile_targets import CPU_INT8, CPU_OPTIMIZED, DEFAULT_TOLERANCES, GPU_FP16, TARGETS
from workers.errors import JobError
from workers.onnx_models import TensorSpec, onnxruntime_reason

__all__ = ["CPU_INT8", "CPU_OPTIMIZED", "DEFAULT_TOLERANCES", "GPU_FP16", "TARGETS", "run_compile"]

logger = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
# Symbolic dimensions other than the batch axis get this size in generated samples.
DEFAULT_SYMBOLIC_DIM = 16
WARMUP_RUNS = 3
# Nodes that only exist in a graph where dynamic quantisation did something.
_QUANTIZED_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention"}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE}


class CompileError(JobError):
    """The model cannot be compiled for the target; `code` and `details` say which op or which limit."""


class CompileCancelled(Exception):
    """should_cancel() answered True between two steps; nothing was registered."""


def _never() -> bool:
    return False


def _ignore_progress(fraction: float, message: str = "") -> None:
    return None


def run_compile(
    source_path: Path,
    *,
    target: str,
    output_path: Path,
    signature_inputs: Iterable[TensorSpec | Mapping],
    sample_inputs: Mapping[str, np.ndarray] | None = None,
    sample_rows: int = 32,
    seed: int = 0,
    tolerance: Mapping[str, float | None] | None = None,
    latency_runs: int = 20,
    threads: int | None = None,
    providers: list[str] | None = None,
    source_sha256: str | None = None,
    report_progress: Callable[[float, str], None] = _ignore_progress,
    should_cancel: Callable[[], bool] = _never,
) -> dict:
    """Write the compiled model to `output_path` and return its validation report.

    The report holds max absolute error, mean cosine similarity, p50 latency and size of
    source and result on the same samples, and `passed` against `tolerance` (the target's
    defaults for what it leaves out). A model that cannot be compiled raises CompileError;
    a compiled model that misses the tolerance is not an error: the report says so.
    """
    if target not in TARGETS:
        raise CompileError("unknown_target", f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    source_path, output_path = Path(source_path), Path(output_path)
    if source_sha256 is not None and _sha256(source_path) != source_sha256:
        raise CompileError("model_checksum_mismatch", "the source model file is not the registered version any more")
    tolerance = {**DEFAULT_TOLERANCES[target], **(tolerance or {})}
    providers = providers or [_provider_for(target)]
    threads = threads or default_threads()

    def checkpoint(fraction: float, message: str) -> None:
        if should_cancel():
            raise CompileCancelled()
        report_progress(fraction, message)

    checkpoint(0.05, f"compiling for {target}")
    started = time.perf_counter()
    compile_model(source_path, output_path, target=target)
    compile_s = time.perf_counter() - started

    checkpoint(0.3, "loading source and result")
    source = _session(source_path, providers=providers, threads=threads, role="source")
    result = _session(output_path, providers=providers, threads=threads, role="result")
    _check_same_signature(source, result)
    if sample_inputs is None:
        samples = generate_sample_inputs(signature_inputs, rows=sample_rows, seed=seed)
        sample_source = {"kind": "generated", "rows": sample_rows, "seed": seed}
    else:
        samples = dict(sample_inputs)
        sample_source = {"kind": "given", "rows": _rows(samples)}

    checkpoint(0.4, "comparing outputs")
    expected = dict(zip([o.name for o in source.get_outputs()], _run(source, samples, "source"), strict=True))
    produced = dict(zip([o.name for o in result.get_outputs()], _run(result, samples, "result"), strict=True))
    per_output = {name: compare_outputs(expected[name], produced[name]) for name in expected}

    latencies = {"source": [], "result": []}
    for _ in range(WARMUP_RUNS):
        source.run(None, samples)
        result.run(None, samples)
    # Alternating source and result spreads any drift of a shared machine over both.
    for index in range(latency_runs):
        checkpoint(0.5 + 0.45 * index / latency_runs, f"latency run {index + 1}/{latency_runs}")
        for name, session in (("source", source), ("result", result)):
            began = time.perf_counter()
            session.run(None, samples)
            latencies[name].append(time.perf_counter() - began)

    before_ms = statistics.median(latencies["source"]) * 1000
    after_ms = statistics.median(latencies["result"]) * 1000
    max_abs = max((o["max_abs_error"] for o in per_output.values()), default=0.0)
    cosine = min((o["mean_cosine"] for o in per_output.values()), default=1.0)
    failures = _judge(per_output, tolerance)
    size_before, size_after = source_path.stat().st_size, output_path.stat().st_size
    return {
        "target": target,
        "passed": not failures,
        "failures": failures,
        "tolerance": tolerance,
        "max_abs_error": _finite_or_none(max_abs),
        "mean_cosine": _finite_or_none(cosine),
        "outputs": {name: {k: _finite_or_none(v) for k, v in o.items()} for name, o in per_output.items()},
        "latency_p50_ms_before": round(before_ms, 4),
        "latency_p50_ms_after": round(after_ms, 4),
        "speedup": round(before_ms / after_ms, 3) if after_ms > 0 else None,
        "size_bytes_before": size_before,
        "size_bytes_after": size_after,
        "size_ratio": round(size_after / size_before, 4),
        "samples": sample_source,
        "latency_runs": latency_runs,
        "threads": threads,
        "provider": result.get_providers()[0],
        "compile_s": round(compile_s, 3),
        "onnxruntime": ort.__version__,
    }


def default_threads() -> int:
    """Threads per session for validation: every core of this host, the same for source and result."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _provider_for(target: str) -> str:
    # A float16 model is meant for CUDA; it is validated there when the host has it, and on
    # CPU otherwise (onnxruntime's CPU provider runs float16 MatMul, Add, Softmax, ...).
    if target == GPU_FP16 and "CUDAExecutionProvider" in ort.get_available_providers():
        return "CUDAExecutionProvider"
    return "CPUExecutionProvider"


# --- the three transformations -----------------------------------------------------------------


def compile_model(source_path: Path, output_path: Path, *, target: str) -> None:
    """Write `source_path` compiled for `target` to `output_path`; CompileError names what stands in the way."""
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if target == CPU_OPTIMIZED:
        _optimize(source_path, output_path)
    elif target == CPU_INT8:
        _quantize_int8(source_path, output_path)
    elif target == GPU_FP16:
        _convert_fp16(source_path, output_path)
    else:
        raise CompileError("unknown_target", f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    _stamp_ir_version(output_path)


def _stamp_ir_version(path: Path) -> None:
    """Give the written model an IR version that fits what it holds.

    The converters copy the source's IR version; for IR 3 that is wrong, since IR 3 needs
    every initializer to be a graph input and the converters add initializers that are not
    (quantisation scales, folded constants): the checker refuses the result. IR 4 dropped
    that rule; the opsets the result imports may need a later one still.
    """
    model = onnx.load(str(path), load_external_data=False)
    needed = max(
        model.ir_version, 4, onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    )
    if needed != model.ir_version:
        model.ir_version = needed
        onnx.save_model(model, str(path))


def _optimize(source_path: Path, output_path: Path) -> None:
    options = _session_options(threads=1)
    # EXTENDED, not ALL: ALL adds layout changes (NCHWc) tied to the CPU that ran them, which
    # onnxruntime documents as unsafe to save and load on another host.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(output_path)
    try:
        ort.InferenceSession(str(source_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise _load_error(exc, "source", "CPUExecutionProvider") from exc


def _quantize_int8(source_path: Path, output_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        # The quantiser logs a pre-processing hint at WARNING on every call; it is advice
        # for static quantisation, not a problem with this model.
        with _quiet("root"):
            quantize_dynamic(source_path, output_path, weight_type=QuantType.QInt8)
    except Exception as exc:  # the quantiser raises plain Exceptions with the node in the message
        raise CompileError(
            "quantization_failed", f"dynamic int8 quantisation failed: {_one_line(exc)}", {"error": str(exc)}
        ) from exc
    quantized = onnx.load(str(output_path), load_external_data=False)
    if not any(node.op_type in _QUANTIZED_OPS for node in quantized.graph.node):
        source_ops = sorted({node.op_type for node in onnx.load(str(source_path)).graph.node})
        raise CompileError(
            "nothing_to_quantize",
            "dynamic int8 quantisation changed nothing: the model has no MatMul, Conv, LSTM or Attention node "
            f"with constant float weights (its ops: {', '.join(source_ops)})",
            {"ops": source_ops},
        )


def _convert_fp16(source_path: Path, output_path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source_path))
    _refuse_out_of_float16_range(model)
    try:
        with _quiet("onnxruntime.transformers.float16"):
            converted = convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # the converter raises plain Exceptions
        raise CompileError(
            "fp16_conversion_failed", f"float16 conversion failed: {_one_line(exc)}", {"error": str(exc)}
        ) from exc
    # keep_io_types appends the input Casts at the end of the node list; the ONNX checker
    # (and so the registry) refuses a graph that is not in topological order.
    _sort_topologically(converted.graph)
    converted.ir_version = model.ir_version
    onnx.save_model(converted, str(output_path))


def _refuse_out_of_float16_range(model: onnx.ModelProto) -> None:
    users: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, node)
    constants = [(tensor, users.get(tensor.name)) for tensor in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.HasField("t"):
                    constants.append((attribute.t, users.get(node.output[0])))
    for tensor, user in constants:
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(tensor)
        finite = values[np.isfinite(values)]
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        if largest > FLOAT16_MAX:
            used_by = f"{user.op_type} node '{user.name or user.output[0]}'" if user is not None else "no node"
            raise CompileError(
                "fp16_out_of_range",
                f"initializer '{tensor.name or (user.name if user else '')}' (used by {used_by}) holds values up to "
                f"{largest:.6g}; float16 holds at most {FLOAT16_MAX:g}, so the converted model would compute with inf",
                {
                    "initializer": tensor.name,
                    "op_type": user.op_type if user is not None else None,
                    "node": (user.name or user.output[0]) if user is not None else None,
                    "max_abs": largest,
                    "limit": FLOAT16_MAX,
                },
            )


def _sort_topologically(graph: onnx.GraphProto) -> None:
    available = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            # Names produced nowhere (outer-scope values of subgraphs): keep the rest as it was.
            ordered.extend(pending)
            break
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        pending = [node for node in pending if node not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


# --- validation ----------------------------------------------------------------------------------


def generate_sample_inputs(
    signature_inputs: Iterable[TensorSpec | Mapping], *, rows: int, seed: int
) -> dict[str, np.ndarray]:
    """Inputs for the signature from a fixed seed: `rows` along the first axis, floats N(0, 1), integers 0-9.

    Symbolic dimensions shared by name get one size; other unknown dimensions get
    DEFAULT_SYMBOLIC_DIM. The same (signature, rows, seed) always gives the same arrays.
    """
    specs = [item if isinstance(item, TensorSpec) else TensorSpec.from_dict(item) for item in signature_inputs]
    # Fewer rows where `rows` would not fit MAX_SAMPLE_BYTES; refused where one row does not.
    one, two = _sample_bytes(specs, 1), _sample_bytes(specs, 2)
    if one > MAX_SAMPLE_BYTES:
        raise CompileError(
            "samples_too_large",
            f"one row of generated sample inputs would take {one} bytes; the limit is {MAX_SAMPLE_BYTES} bytes: "
            "give sample_inputs, or a model with smaller inputs",
            {"row_bytes": one, "max_bytes": MAX_SAMPLE_BYTES},
        )
    per_row = two - one
    if per_row > 0:
        rows = max(1, min(rows, (MAX_SAMPLE_BYTES - (one - per_row)) // per_row))
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}  # symbolic dimensions shared by name get one size
    return {spec.name: _random_array(rng, spec, _sample_shape(spec, rows, sizes)) for spec in specs}


# Generated samples (source and result each run them) stay within this many bytes.
MAX_SAMPLE_BYTES = 64 * 1024 * 1024


def _sample_shape(spec: TensorSpec, rows: int, sizes: dict[str, int]) -> tuple[int, ...]:
    shape = []
    for axis, dim in enumerate(spec.shape if spec.shape is not None else [None]):
        if isinstance(dim, int):
            shape.append(dim)
        elif isinstance(dim, str):
            shape.append(sizes.setdefault(dim, rows if axis == 0 else DEFAULT_SYMBOLIC_DIM))
        else:
            shape.append(rows if axis == 0 else DEFAULT_SYMBOLIC_DIM)
    return tuple(shape)


def _sample_bytes(specs: list[TensorSpec], rows: int) -> int:
    sizes: dict[str, int] = {}
    total = 0
    for spec in specs:
        try:
            itemsize = np.dtype(spec.dtype).itemsize if spec.dtype != "string" else 8
        except TypeError:  # a type numpy does not know: _random_array refuses it with its name
            itemsize = 1
        total += math.prod(_sample_shape(spec, rows, sizes)) * itemsize
    return total


def _random_array(rng: np.random.Generator, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.dtype == "string":
        raise CompileError(
            "samples_required",
            f"input '{spec.name}' takes strings: samples cannot be generated for it; give sample_inputs",
            {"input": spec.name},
        )
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        # Small non-negative integers are valid ids, indices and counts for most models.
        return rng.integers(0, 10, size=shape).astype(dtype)
    raise CompileError(
        "samples_required",
        f"input '{spec.name}' has dtype {spec.dtype}: samples cannot be generated for it; give sample_inputs",
        {"input": spec.name},
    )


def compare_outputs(expected: np.ndarray, produced: np.ndarray) -> dict[str, float]:
    """Max absolute error and mean cosine similarity (per sample along the first axis) of two outputs."""
    if expected.shape != produced.shape:
        raise CompileError(
            "output_shape_changed",
            f"the result's output has shape {list(produced.shape)}; the source's has {list(expected.shape)}",
        )
    if expected.dtype.kind not in "fiub":
        equal = bool(np.array_equal(expected, produced))
        return {"max_abs_error": 0.0 if equal else math.inf, "mean_cosine": 1.0 if equal else 0.0}
    a = expected.astype(np.float64)
    b = produced.astype(np.float64)
    same_non_finite = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    difference = np.where(same_non_finite, 0.0, np.abs(a - b))
    max_abs = float(np.nan_to_num(difference, nan=math.inf).max()) if difference.size else 0.0
    rows = a.reshape(a.shape[0], -1) if a.ndim > 0 else a.reshape(1, 1)
    other = b.reshape(rows.shape)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(other, axis=1)
    dots = np.sum(rows * other, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Two all-zero rows agree exactly; a zero row against a non-zero one does not at all.
        both_zero = (np.linalg.norm(rows, axis=1) == 0) & (np.linalg.norm(other, axis=1) == 0)
        cosines = np.where(both_zero, 1.0, np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0))
    cosine = float(np.nan_to_num(cosines, nan=0.0).mean()) if cosines.size else 1.0
    return {"max_abs_error": max_abs, "mean_cosine": cosine}


def _judge(per_output: dict[str, dict], tolerance: Mapping[str, float | None]) -> list[str]:
    failures = []
    limit_error, limit_cosine = tolerance.get("max_abs_error"), tolerance.get("min_cosine")
    for name, metrics in per_output.items():
        if limit_error is not None and not metrics["max_abs_error"] <= limit_error:
            failures.append(
                f"output '{name}': max absolute error {metrics['max_abs_error']:.6g} exceeds {limit_error:g}"
            )
        if limit_cosine is not None and not metrics["mean_cosine"] >= limit_cosine:
            failures.append(
                f"output '{name}': mean cosine similarity {metrics['mean_cosine']:.6f} below {limit_cosine:g}"
            )
    return failures


def _check_same_signature(source: ort.InferenceSession, result: ort.InferenceSession) -> None:
    for role, before, after in (
        ("input", source.get_inputs(), result.get_inputs()),
        ("output", source.get_outputs(), result.get_outputs()),
    ):
        was = [(arg.name, arg.type) for arg in before]
        now = [(arg.name, arg.type) for arg in after]
        if sorted(was) != sorted(now):
            raise CompileError(
                "signature_changed",
                f"the compiled model's {role}s {now} differ from the source's {was}: callers could not use it",
                {"source": was, "result": now},
            )


def _session(path: Path, *, providers: list[str], threads: int, role: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=_session_options(threads=threads),
            providers=list(dict.fromkeys([*providers, "CPUExecutionProvider"])),
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise _load_error(exc, role, providers[0]) from exc


def _session_options(*, threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def _load_error(exc: Exception, role: str, provider: str) -> CompileError:
    reason = onnxruntime_reason(exc)
    details: dict = {"onnxruntime_error": str(exc), "provider": provider, "model": role}
    # "Could not find an implementation for Softmax(13) node with name 'n'": which op, which limit.
    if "Could not find an implementation for" in reason:
        op = reason.split("Could not find an implementation for", 1)[1].strip()
        details["op"] = op.split("(", 1)[0]
        return CompileError(
            "unsupported_op",
            f"onnxruntime {ort.__version__} on {provider} has no kernel for the {role} model's {op}",
            details,
        )
    return CompileError("load_failed", f"onnxruntime cannot load the {role} model on {provider}: {reason}", details)


def _run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], role: str) -> list[np.ndarray]:
    try:
        return session.run(None, dict(feeds))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise CompileError(
            "validation_run_failed",
            f"running the {role} model on the samples failed: {onnxruntime_reason(exc)}",
            {"model": role},
        ) from exc


def _rows(samples: Mapping[str, np.ndarray]) -> int:
    first = next(iter(samples.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _finite_or_none(value):
    # JSON (and PostgreSQL's jsonb) has no Infinity or NaN; null says "not a number" there.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(exc: Exception, limit: int = 500) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet(logger_name: str):
    target = logging.getLogger(logger_name if logger_name != "root" else None)
    previous = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(previous)
