"""The inference-batch executor: onnxruntime sessions (cached per process), input checks, batched runs, .npz outputs."""

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from workers import array_files
from workers.onnx_models import TensorSpec, onnxruntime_reason

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEVICE_PREFERENCES = ("cpu", "gpu", "auto")

# Read from the environment (not Django settings: this module runs without Django).
SESSION_CACHE_BYTES_ENV = "INFERENCE_SESSION_CACHE_BYTES"
INTRA_OP_THREADS_ENV = "INFERENCE_INTRA_OP_THREADS"
ALLOW_SPINNING_ENV = "INFERENCE_ALLOW_SPINNING"
# Counts model file bytes, not memory: each cached session of the 9.45 MB test MLP added
# ~22 MB of RSS (measured, onnxruntime 1.31 CPU), so 2 GiB of models is ~5 GiB of worker memory.
DEFAULT_SESSION_CACHE_BYTES = 2 * 1024**3


class InferenceError(Exception):
    """The job cannot succeed as asked; `code` is stable for clients, `message` says why."""

    code = "inference_failed"

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InputValidationError(InferenceError):
    """An input (or a run parameter) does not match the model; `field` names it."""

    code = "invalid_input"

    def __init__(self, field: str, message: str, details: dict | None = None):
        super().__init__(message, {"field": field, **(details or {})})
        self.field = field


class ModelChecksumMismatch(InferenceError):
    """The model file on disk is not the registered version any more."""

    code = "model_checksum_mismatch"


class SessionLoadError(InferenceError):
    """onnxruntime could not create a session for the model with the chosen providers."""

    code = "session_load_failed"


class OutputNotBatched(InferenceError):
    """An output does not follow the inputs' batch axis, so batches cannot be concatenated."""

    code = "output_not_batched"


class InferenceCancelled(Exception):
    """should_cancel() answered True between two batches; nothing was written."""

    def __init__(self, rows_done: int, rows_total: int):
        super().__init__(f"cancelled after {rows_done} of {rows_total} rows")
        self.rows_done = rows_done
        self.rows_total = rows_total


# --- providers and sessions ----------------------------------------------------------------


def choose_providers(preference: str) -> list[str]:
    """onnxruntime providers for a job: CUDA first when installed and allowed, CPU always as the fallback.

    "gpu" and "auto" both fall back to CPU where CUDA is not installed (the provider that
    actually ran is in the run summary); "cpu" never touches CUDA. Listing the available
    providers does not initialise CUDA: only creating a CUDA session does, and that
    happens in `SessionCache.get_session`, in the process that runs the job.
    """
    if preference not in DEVICE_PREFERENCES:
        raise InputValidationError(
            "device_preference", f"device_preference must be one of {', '.join(DEVICE_PREFERENCES)}; got {preference!r}"
        )
    if preference != "cpu" and CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


@dataclass
class _CachedSession:
    session: ort.InferenceSession
    weight: int


class SessionCache:
    """onnxruntime sessions of one process, keyed by (model sha256, providers), LRU-bounded by model bytes.

    Thread-safe. Sessions are created lazily, never at import: CUDA cannot survive a fork
    once initialised, so a gpu worker (prefork, one child) must create its CUDA sessions
    in the child that runs the job, never in the parent before it forks.
    """

    def __init__(self, max_bytes: int, *, intra_op_threads: int | None = None, allow_spinning: bool = False):
        self.max_bytes = max_bytes
        self.intra_op_threads = intra_op_threads
        # onnxruntime's pool threads spin between runs by default, which pays off only on
        # cores nobody else wants. A worker host shares its cores: several worker children,
        # the .npz writer thread, the heartbeat. Measured on the 2-core host under load (MLP,
        # same rows): spinning off ran 1.8x (batch 1), 2.4x (32) and 1.2x (256) as fast.
        self.allow_spinning = allow_spinning
        self._entries: OrderedDict[tuple[str, tuple[str, ...]], _CachedSession] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # One lock per model being loaded, so two threads asking for the same cold model
        # load it once, while hits on other models are not held up by the load.
        self._loading: dict[tuple[str, tuple[str, ...]], threading.Lock] = {}

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, tuple[str, ...]]) -> bool:
        return key in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def get_session(self, path: Path, sha256: str, providers: Sequence[str]) -> ort.InferenceSession:
        key = (sha256, tuple(providers))
        with self._lock:
            session = self._hit(key)
            if session is not None:
                return session
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                session = self._hit(key)
                if session is not None:
                    return session
            try:
                session, weight = self._load(Path(path), sha256, key[1])
                with self._lock:
                    self._insert(key, _CachedSession(session, weight))
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return session

    def _hit(self, key) -> ort.InferenceSession | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.session

    def _insert(self, key, entry: _CachedSession) -> None:
        if entry.weight > self.max_bytes:
            # Runs uncached rather than evicting everything for a model that cannot fit anyway.
            logger.warning(
                "inference.session_not_cached", extra={"size_bytes": entry.weight, "max_bytes": self.max_bytes}
            )
            return
        while self._entries and self._bytes + entry.weight > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.weight
        self._entries[key] = entry
        self._bytes += entry.weight

    def _load(self, path: Path, sha256: str, providers: tuple[str, ...]) -> tuple[ort.InferenceSession, int]:
        # The session is built from the bytes that were hashed, so what runs is exactly the
        # registered version even if the file is replaced meanwhile.
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ModelChecksumMismatch(
                f"model file {path.name} has sha256 {actual}, not the registered {sha256}",
                {"expected_sha256": sha256, "actual_sha256": actual},
            )
        if CUDA_PROVIDER in providers:
            _preload_cuda_libraries()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        started = time.perf_counter()
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            raise SessionLoadError(
                f"onnxruntime cannot load {path.name}: {onnxruntime_reason(exc)}", {"onnxruntime_error": str(exc)}
            ) from exc
        logger.info(
            "inference.session_loaded",
            extra={
                "sha256": sha256,
                "providers": list(providers),
                "provider": session.get_providers()[0],
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        return session, len(data)


_cuda_libraries_loaded = False


def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu finds the CUDA/cuDNN libraries that pip installed only after
    # preload_dlls(); without it the CUDA provider fails to load and the session silently
    # falls back to CPU.
    global _cuda_libraries_loaded
    if _cuda_libraries_loaded or not hasattr(ort, "preload_dlls"):
        return
    try:
        ort.preload_dlls()
    except Exception:
        logger.exception("inference.cuda_preload_failed")
    _cuda_libraries_loaded = True


_default_cache: SessionCache | None = None
_default_cache_lock = threading.Lock()


def default_session_cache() -> SessionCache:
    """This process's session cache, configured by the INFERENCE_* environment variables (see the README)."""
    global _default_cache
    with _default_cache_lock:
        if _default_cache is None:
            threads = os.environ.get(INTRA_OP_THREADS_ENV)
            _default_cache = SessionCache(
                int(os.environ.get(SESSION_CACHE_BYTES_ENV, DEFAULT_SESSION_CACHE_BYTES)),
                # 0 or unset: onnxruntime's default, one thread per physical core. Workers
                # running several children on one host should divide the cores between them.
                intra_op_threads=int(threads) if threads else None,
                allow_spinning=os.environ.get(ALLOW_SPINNING_ENV, "0").lower() in ("1", "true", "yes"),
            )
        return _default_cache


# onnxruntime's type strings for tensors, as numpy dtype names (TensorSpec.dtype).
_ORT_TENSOR_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def session_signature(session: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The session's inputs and outputs as TensorSpecs (the same shape as the registry stores)."""

    def spec(arg) -> TensorSpec:
        dtype = _ORT_TENSOR_DTYPES.get(arg.type, arg.type)
        return TensorSpec(name=arg.name, dtype=dtype, shape=list(arg.shape) if arg.shape is not None else None)

    return [spec(arg) for arg in session.get_inputs()], [spec(arg) for arg in session.get_outputs()]


# --- inputs ----------------------------------------------------------------------------------


def _specs(signature_inputs: Iterable[TensorSpec | Mapping]) -> dict[str, TensorSpec]:
    specs = [item if isinstance(item, TensorSpec) else TensorSpec.from_dict(item) for item in signature_inputs]
    return {spec.name: spec for spec in specs}


def _describe(spec: TensorSpec) -> str:
    return f"{spec.dtype} {_shape_text(spec.shape)}"


def _shape_text(shape) -> str:
    if shape is None:
        return "(any shape)"
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _refuse_unknown_and_missing(specs: dict[str, TensorSpec], given: Iterable[str]) -> None:
    given = list(given)
    takes = "; ".join(f"{name} ({_describe(spec)})" for name, spec in specs.items())
    unknown = [name for name in given if name not in specs]
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise InputValidationError(
            unknown[0], f"unknown input {names}: the model takes {takes}", {"unknown": unknown, "expected": list(specs)}
        )
    for name, spec in specs.items():
        if name not in given:
            raise InputValidationError(name, f"missing input '{name}': the model expects {_describe(spec)}")


def validate_inputs(signature_inputs: Iterable[TensorSpec | Mapping], inputs: Mapping[str, np.ndarray]) -> None:
    """Refuse inputs that do not match the signature, naming the input and what was expected and given.

    Arrays must have exactly the expected dtype (no silent casts of uploaded arrays:
    float64 for a float32 input is refused with the conversion to make); JSON lists are
    converted before this by `coerce_inline_inputs`. Inputs sharing a symbolic dimension
    ("N") must agree on its size.
    """
    specs = _specs(signature_inputs)
    _refuse_unknown_and_missing(specs, inputs)
    symbolic_sizes: dict[str, tuple[int, str]] = {}
    for name, spec in specs.items():
        array = inputs[name]
        if not isinstance(array, np.ndarray):
            raise InputValidationError(name, f"input '{name}' must be a numpy array, not {type(array).__name__}")
        _check_dtype(name, spec, array)
        if spec.shape is None:
            continue
        given = list(array.shape)
        if len(given) != len(spec.shape):
            raise InputValidationError(
                name,
                f"input '{name}' has shape {_shape_text(given)} (rank {len(given)}); "
                f"the model expects {_shape_text(spec.shape)} (rank {len(spec.shape)})",
                {"expected_shape": spec.shape, "given_shape": given},
            )
        for axis, (expected, size) in enumerate(zip(spec.shape, given, strict=True)):
            if isinstance(expected, int) and expected != size:
                raise InputValidationError(
                    name,
                    f"input '{name}' has shape {_shape_text(given)}; the model expects {_shape_text(spec.shape)} "
                    f"(axis {axis} must be {expected}, is {size})",
                    {"expected_shape": spec.shape, "given_shape": given, "axis": axis},
                )
            if isinstance(expected, str):
                first = symbolic_sizes.setdefault(expected, (size, name))
                if first[0] != size:
                    raise InputValidationError(
                        name,
                        f"input '{name}' has {size} along axis {axis} ('{expected}') but input '{first[1]}' has "
                        f"{first[0]}: inputs sharing the dimension '{expected}' must have the same size",
                        {"dimension": expected, "given_shape": given},
                    )


def _check_dtype(name: str, spec: TensorSpec, array: np.ndarray) -> None:
    if spec.dtype == "string":
        if array.dtype.kind not in "UO":
            raise InputValidationError(
                name,
                f"input '{name}' has dtype {array.dtype}; the model expects strings",
                {"given_dtype": str(array.dtype)},
            )
        return
    if array.dtype.name != spec.dtype:
        raise InputValidationError(
            name,
            f"input '{name}' has dtype {array.dtype.name}; the model expects {spec.dtype} "
            f"(convert it with .astype('{spec.dtype}'))",
            {"expected_dtype": spec.dtype, "given_dtype": array.dtype.name},
        )


def coerce_inline_inputs(
    signature_inputs: Iterable[TensorSpec | Mapping], payload: Mapping[str, object]
) -> dict[str, np.ndarray]:
    """Turn inline JSON inputs (nested lists) into arrays of each input's dtype, then validate them.

    JSON has only numbers, so conversion is allowed where it loses nothing: integers to
    any numeric input, floats to float inputs, and floats to integer inputs only when they
    are whole numbers within range. A list of booleans goes only to a bool input, a list
    of strings only to a string input.
    """
    specs = _specs(signature_inputs)
    _refuse_unknown_and_missing(specs, payload)
    arrays = {name: _coerce_value(name, specs[name], value) for name, value in payload.items()}
    validate_inputs(specs.values(), arrays)
    return arrays


def _coerce_value(name: str, spec: TensorSpec, value: object) -> np.ndarray:
    try:
        natural = np.asarray(value)
    except (ValueError, OverflowError) as exc:
        raise InputValidationError(
            name, f"input '{name}' is not a rectangular array: every row must have the same length ({exc})"
        ) from exc
    if natural.size == 0 and natural.dtype.kind == "f":
        # An empty list carries no type (np.asarray makes it float64) and no shape past its
        # first axis: `[]` is 0 rows of a batch axis whose other dims are all fixed.
        if (
            natural.shape == (0,)
            and spec.shape
            and len(spec.shape) > 1
            and all(isinstance(dim, int) for dim in spec.shape[1:])
        ):
            natural = natural.reshape((0, *spec.shape[1:]))
        return natural.astype("<U1" if spec.dtype == "string" else spec.dtype)
    kind = natural.dtype.kind
    if spec.dtype == "string":
        if kind != "U":
            raise InputValidationError(name, f"input '{name}' expects strings; got {_json_kind(kind)}")
        return natural
    if kind == "O":
        raise InputValidationError(
            name,
            f"input '{name}' expects {spec.dtype}: it must hold numbers only (no nulls, no integers beyond 64 bits)",
        )
    expected = np.dtype(spec.dtype)
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(expected.kind, "iuf")
    if expected.kind in "iu" and kind == "f":
        _refuse_fractions_and_overflow(name, spec, natural)
    elif kind not in allowed:
        raise InputValidationError(
            name,
            f"input '{name}' expects {spec.dtype}; got {_json_kind(kind)}",
            {"expected_dtype": spec.dtype, "given_dtype": natural.dtype.name},
        )
    if expected.kind in "iu" and kind in "iu":
        _refuse_overflow(name, spec, natural)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = natural.astype(expected)
    if expected.kind == "f":
        overflowed = np.isinf(converted) & np.isfinite(natural)
        if overflowed.any():
            index = tuple(int(i) for i in np.argwhere(overflowed)[0])
            raise InputValidationError(name, f"input '{name}': value at index {index} is out of range for {spec.dtype}")
    return converted


def _refuse_fractions_and_overflow(name: str, spec: TensorSpec, natural: np.ndarray) -> None:
    fractional = ~np.isfinite(natural) | (np.mod(natural, 1) != 0)
    if fractional.any():
        index = tuple(int(i) for i in np.argwhere(fractional)[0])
        raise InputValidationError(
            name,
            f"input '{name}' expects {spec.dtype}; "
            f"value {natural[index].item()!r} at index {index} is not a whole number",
            {"expected_dtype": spec.dtype},
        )
    _refuse_overflow(name, spec, natural)


def _refuse_overflow(name: str, spec: TensorSpec, natural: np.ndarray) -> None:
    if natural.size == 0:
        return
    limits = np.iinfo(spec.dtype)
    # As Python numbers: numpy compares uint64 with a Python int bound inexactly.
    low, high = natural.min().item(), natural.max().item()
    if low < limits.min or high > limits.max:
        raise InputValidationError(
            name,
            f"input '{name}' expects {spec.dtype}; values must lie in [{limits.min}, {limits.max}], "
            f"got values from {low} to {high}",
            {"expected_dtype": spec.dtype},
        )


def _json_kind(kind: str) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}.get(kind, "other values")


def load_array_inputs(
    path: Path, input_names: Sequence[str] | None = None, *, max_bytes: int | None = None, headers_only: bool = False
) -> dict[str, np.ndarray]:
    """Read uploaded inputs: a `.npz` keyed by input name, or a `.npy` for a model with one input.

    `input_names` (the model's inputs) names a `.npy` array. Never unpickles. Arrays
    stored uncompressed (`.npy`, and `.npz` members written by `np.savez`) are
    memory-mapped, so a large upload is read batch by batch instead of all at once;
    `max_bytes` bounds the arrays' size, checked from their headers before any is read.
    `headers_only` gives read-only stand-ins with each array's shape and dtype and no data
    (one element, strides of 0): enough for `validate_inputs`, at the cost of reading the
    headers, even of a compressed member.
    """
    path = Path(path)
    try:
        is_npy = array_files.array_file_format(path) == "npy"
        if is_npy and (input_names is None or len(input_names) != 1):
            count = "several" if input_names is None else len(input_names)
            raise InputValidationError(
                "inputs",
                f"a .npy file holds one array, for a model with exactly one input; this model takes {count}: "
                "upload a .npz with one array per input name",
            )
        if headers_only:
            arrays = {name: _stand_in(header) for name, header in array_files.read_headers(path).items()}
        else:
            arrays = array_files.open_arrays(path, max_bytes=max_bytes)
    except array_files.ArrayFileError as exc:
        raise InputValidationError("inputs", f"cannot use {path.name} as inputs: {exc.message}") from exc
    except OSError as exc:
        raise InputValidationError("inputs", f"cannot read {path.name}: {exc}") from exc
    if is_npy:
        return {input_names[0]: arrays[""]}
    return arrays


def _stand_in(header: array_files.ArrayHeader) -> np.ndarray:
    dtype = header.dtype.newbyteorder("=")
    return np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype=dtype), shape=header.shape, strides=(0,) * len(header.shape), writeable=False
    )


# --- the run ---------------------------------------------------------------------------------


def run_inference(
    model_path: Path,
    *,
    sha256: str,
    inputs: Mapping[str, np.ndarray],
    batch_size: int,
    output_path: Path,
    split_rows: bool = False,
    wanted_outputs: Sequence[str] | None = None,
    device_preference: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    session_cache: SessionCache | None = None,
) -> dict:
    """Run the model over `inputs` (in batches along axis 0 where allowed); write the outputs to `output_path` (.npz).

    Rows are split into batches of `batch_size` only with `split_rows=True`, which the
    caller may pass only for a model whose rows were found independent (the upload-time
    probe, `workers.onnx_models.probe_batching`): splitting a model that mixes rows along
    the batch axis would return different numbers. Otherwise the input runs whole, in one
    call, as do 0-row inputs, scalars and models without a batch axis; every output keeps
    its true shape.

    `on_progress(rows_done, rows_total)` is called after every batch (throttling writes is
    the caller's business); `should_cancel()` is asked between batches and a True answer
    raises InferenceCancelled with nothing written. A model whose inputs have a fixed first
    axis, or first axes of different sizes, is not batchable and runs in one call.
    """
    if batch_size < 1:
        raise InputValidationError("batch_size", f"batch_size must be at least 1; got {batch_size}")
    providers = choose_providers(device_preference)
    cache = session_cache if session_cache is not None else default_session_cache()
    load_started = time.perf_counter()
    session = cache.get_session(model_path, sha256, providers)
    load_seconds = time.perf_counter() - load_started
    input_specs, output_specs = session_signature(session)
    validate_inputs(input_specs, inputs)
    output_names = _select_outputs(output_specs, wanted_outputs)
    # A C-contiguous array sliced along axis 0 gives contiguous views: onnxruntime then
    # reads each batch in place. Anything else is made contiguous once, not per batch.
    feeds = {name: array if array.flags.c_contiguous else np.ascontiguousarray(array) for name, array in inputs.items()}
    rows, batchable = _batch_axis(input_specs, feeds)
    batchable = batchable and split_rows and rows > 0
    step = min(batch_size, rows) if batchable else rows

    started = time.perf_counter()
    cpu_started = time.process_time()
    outputs, batches, writer = _run_batches(
        session, feeds, output_names, rows, step, batchable, on_progress, should_cancel, Path(output_path)
    )
    seconds = time.perf_counter() - started

    write_started = time.perf_counter()
    output_sha256, output_size = writer.finish()
    write_seconds = time.perf_counter() - write_started
    cpu_seconds = time.process_time() - cpu_started
    summary = {
        "rows": rows,
        "batches": batches,
        "batch_size": step,
        "outputs": outputs,
        "seconds": round(seconds, 6),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
        "session_load_seconds": round(load_seconds, 6),
        # What writing and hashing the .npz took after the last batch: the first output is
        # written while batches run, so this is its last chunk plus any further outputs.
        "write_seconds": round(write_seconds, 6),
        # CPU time of this process (onnxruntime's threads and the writer's included) over the
        # batch loop and the write: unlike wall time, other processes' load barely moves it.
        "cpu_seconds": round(cpu_seconds, 6),
        "provider": session.get_providers()[0],
        "providers_requested": providers,
        "device_preference": device_preference,
        "output_sha256": output_sha256,
        "output_size_bytes": output_size,
    }
    logger.info(
        "inference.finished",
        extra={key: summary[key] for key in ("rows", "batches", "batch_size", "rows_per_s", "provider")},
    )
    return summary


def _select_outputs(output_specs: list[TensorSpec], wanted: Sequence[str] | None) -> list[str]:
    names = [spec.name for spec in output_specs]
    if wanted is None:
        return names
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise InputValidationError(
            "wanted_outputs",
            f"unknown output {', '.join(repr(name) for name in unknown)}: the model's outputs are {', '.join(names)}",
            {"unknown": unknown, "outputs": names},
        )
    if not wanted:
        raise InputValidationError("wanted_outputs", f"wanted_outputs is empty: name some of {', '.join(names)}")
    return list(dict.fromkeys(wanted))


def _batch_axis(input_specs: list[TensorSpec], feeds: Mapping[str, np.ndarray]) -> tuple[int, bool]:
    """(rows, batchable): batchable when every input has a non-fixed first axis of the same size."""
    sizes = {array.shape[0] if array.ndim else None for array in feeds.values()}
    fixed_first_axis = any(spec.shape and isinstance(spec.shape[0], int) for spec in input_specs)
    first = next(iter(feeds.values()), None)
    if first is None:  # a model without inputs (constants only): one call
        return 1, False
    rows = first.shape[0] if first.ndim else 1
    batchable = len(sizes) == 1 and None not in sizes and not fixed_first_axis
    return rows, batchable


def _run_batches(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_names: list[str],
    rows: int,
    step: int,
    batchable: bool,
    on_progress: Callable[[int, int], None] | None,
    should_cancel: Callable[[], bool] | None,
    output_path: Path,
) -> tuple[dict[str, dict], int, "_NpzWriter"]:
    """Run the batches, handing each batch's outputs to the .npz writer; returns (output shapes, batches, writer)."""

    def run(feed: dict[str, np.ndarray], start: int, stop: int) -> list[np.ndarray]:
        try:
            return session.run(output_names, feed)
        except Exception as exc:  # onnxruntime's own error types: a shape or value the graph rejects at run time
            if rows == 0:
                raise InferenceError(
                    f"onnxruntime cannot run 0 rows of this model: {onnxruntime_reason(exc)}",
                    {"rows": [0, 0], "onnxruntime_error": str(exc)},
                ) from exc
            raise InferenceError(
                f"onnxruntime failed on rows {start} to {stop - 1}: {onnxruntime_reason(exc)}",
                {"rows": [start, stop], "onnxruntime_error": str(exc)},
            ) from exc

    if not batchable or step >= rows:
        # One call: its outputs are the results, written whole.
        produced = dict(zip(output_names, run(dict(feeds), 0, rows), strict=True))
        writer = _NpzWriter(output_path, dict.fromkeys(output_names))
        writer.add(produced, last=True)
        if on_progress is not None:
            on_progress(rows, rows)
        return _describe_outputs(produced), 1, writer
    writer: _NpzWriter | None = None
    first: dict[str, np.ndarray] = {}
    batches = 0
    try:
        for start in range(0, rows, step):
            if batches and should_cancel is not None and should_cancel():
                raise InferenceCancelled(rows_done=start, rows_total=rows)
            stop = min(start + step, rows)
            batch = run({name: array[start:stop] for name, array in feeds.items()}, start, stop)
            produced = dict(zip(output_names, batch, strict=True))
            if writer is None:
                first = produced
                writer = _NpzWriter(output_path, _batched_shapes(produced, rows, stop - start))
            for name, value in produced.items():
                if value.ndim == 0 or value.shape[0] != stop - start or value.shape[1:] != first[name].shape[1:]:
                    raise _not_batched(name, value, stop - start)
            # No copy: the writer keeps onnxruntime's arrays until their bytes are written.
            writer.add(produced, last=stop == rows)
            batches += 1
            if on_progress is not None:
                on_progress(stop, rows)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    outputs = {name: {"shape": [rows, *value.shape[1:]], "dtype": _dtype_name(value)} for name, value in first.items()}
    return outputs, batches, writer


def _batched_shapes(produced: Mapping[str, np.ndarray], rows: int, batch_rows: int) -> dict[str, tuple | None]:
    """Each output's full shape, known from the first batch, so its .npy header can be written before its rows."""
    shapes: dict[str, tuple | None] = {}
    for name, value in produced.items():
        if value.ndim == 0 or value.shape[0] != batch_rows:
            raise _not_batched(name, value, batch_rows)
        # Strings (object arrays) get a fixed width only once every row is known.
        shapes[name] = None if value.dtype.kind == "O" else (rows, *value.shape[1:])
    return shapes


def _describe_outputs(outputs: Mapping[str, np.ndarray]) -> dict[str, dict]:
    return {name: {"shape": list(array.shape), "dtype": _dtype_name(array)} for name, array in outputs.items()}


def _not_batched(name: str, value: np.ndarray, batch_rows: int) -> OutputNotBatched:
    return OutputNotBatched(
        f"output '{name}' has shape {list(value.shape)} for a batch of {batch_rows} rows: it does not follow the "
        "batch axis, so batches cannot be joined; run with batch_size at least the number of rows",
        {"output": name, "shape": list(value.shape)},
    )


def _dtype_name(array: np.ndarray) -> str:
    return "string" if array.dtype.kind in "UO" else array.dtype.name


class _NpzWriter:
    """Writes the outputs as an uncompressed .npz (what np.savez writes) from a thread, while batches still run.

    Writing and hashing the outputs after the batch loop cost ~25 ms per 12.6 MB on a
    2-core host (measured), a fifth of a fast model's loop. Here each batch's outputs are
    handed over as onnxruntime returned them (no copy into a preallocated array), and the
    first output's rows are written, CRC'd and hashed as they arrive; zlib, hashlib and
    file writes release the GIL, so this overlaps onnxruntime's run, and written batches
    are freed at once. Zip members follow one another, so later outputs are written once
    the first is complete. The thread wakes up every `CHUNK_BYTES` of new rows, and joins
    small batches into one write: at batch 1 a write per row would cost more than the row.

    Written member by member instead of np.savez(file, **arrays), which would break on an
    output named "file" or "allow_pickle". Never pickles: string outputs are stored as
    fixed-width unicode. Hashed as it is written (one pass, no re-read), into a temporary
    file beside the final path that is renamed only by `finish()`, so a crash, an error
    or a cancellation leaves no half-written output under the final name.
    """

    CHUNK_BYTES = 4 * 1024 * 1024

    def __init__(self, path: Path, shapes: Mapping[str, tuple | None]):
        """`shapes`: each output's full shape to stream it by batch, or None to write it whole at the end."""
        self.path = Path(path)
        self.shapes = dict(shapes)
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self.shapes}
        self._pending_bytes = 0  # of the member being written: what a wake-up is worth
        # Rows the batch loop has produced but not yet handed over: handed over a chunk at a
        # time, so the loop takes the lock once per chunk instead of once per batch (the writer
        # wakes up once per chunk anyway). Only the first output is written while batches run,
        # so its bytes decide when a chunk is worth handing over.
        self._staged: dict[str, list[np.ndarray]] = {name: [] for name in self.shapes}
        self._staged_bytes = 0
        self._first = next(iter(self.shapes), None)
        self._current = next(iter(self.shapes), None)
        self._complete = False
        self._aborted = False
        self._condition = threading.Condition()
        self._result: tuple[str, int] | None = None
        self._error: BaseException | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        self._file = os.fdopen(descriptor, "wb")
        self._temporary = Path(temporary)
        self._thread = threading.Thread(target=self._write, name="inference-npz-writer", daemon=True)
        self._thread.start()

    def add(self, arrays: Mapping[str, np.ndarray], *, last: bool) -> None:
        """The next rows of every output (called by the batch loop, in row order)."""
        for name, array in arrays.items():
            self._staged[name].append(array)
        if self._first in arrays:
            self._staged_bytes += arrays[self._first].nbytes
        if not last and self._staged_bytes < self.CHUNK_BYTES:
            return
        with self._condition:
            for name, staged in self._staged.items():
                self._pending[name].extend(staged)
                if name == self._current:
                    self._pending_bytes += sum(array.nbytes for array in staged)
                staged.clear()
            self._staged_bytes = 0
            self._complete = last
            self._condition.notify()

    def finish(self) -> tuple[str, int]:
        """Wait for the last bytes, put the file under its final name; return its sha256 and size."""
        self._thread.join()
        if self._error is not None:
            self._temporary.unlink(missing_ok=True)
            raise self._error
        os.replace(self._temporary, self.path)
        assert self._result is not None
        return self._result

    def abort(self) -> None:
        with self._condition:
            self._aborted = True
            self._condition.notify()
        self._thread.join()
        self._temporary.unlink(missing_ok=True)

    def _take(self, name: str, *, everything: bool) -> tuple[list[np.ndarray], bool]:
        """Wait for a chunk's worth of `name`'s rows (or all of them); return them and whether they are the last."""
        with self._condition:
            while not self._aborted and not self._complete and (everything or self._pending_bytes < self.CHUNK_BYTES):
                self._condition.wait()
            if self._aborted:
                raise _WriteAborted()
            taken, self._pending[name] = self._pending[name], []
            self._pending_bytes = 0
            return taken, self._complete

    def _write(self) -> None:
        try:
            with self._file as file:
                archive = array_files.NpzStreamWriter(file)
                for name, shape in self.shapes.items():
                    with self._condition:
                        self._current = name
                        self._pending_bytes = sum(array.nbytes for array in self._pending[name])
                    archive.begin(name)
                    if shape is None:
                        self._write_whole(archive, name)
                    else:
                        self._write_streamed(archive, name, shape)
                    archive.end()
                self._result = archive.close()
        except _WriteAborted:
            pass
        except BaseException as exc:  # handed to finish(), in the thread that called run_inference
            self._error = exc

    def _write_whole(self, archive: array_files.NpzStreamWriter, name: str) -> None:
        parts, _ = self._take(name, everything=True)
        array = parts[0] if len(parts) == 1 else np.concatenate(parts)
        # Not np.ascontiguousarray: it turns a scalar (shape ()) into shape (1,).
        stored = array.astype(str) if array.dtype.kind == "O" else np.require(array, requirements="C")
        np.lib.format.write_array(archive, stored, allow_pickle=False)

    def _write_streamed(self, archive: array_files.NpzStreamWriter, name: str, shape: tuple) -> None:
        header = {"descr": None, "fortran_order": False, "shape": shape}
        last = False
        while not last:
            parts, last = self._take(name, everything=False)
            if header is not None and parts:
                header["descr"] = np.lib.format.dtype_to_descr(parts[0].dtype)
                try:
                    np.lib.format.write_array_header_1_0(archive, header)
                except ValueError:  # a header too long for format 1.0 (very many dimensions)
                    np.lib.format.write_array_header_2_0(archive, header)
                header = None
            # Small batches are joined into one write; large ones are written as they are.
            if len(parts) > 1 and sum(part.nbytes for part in parts) < 4 * len(parts) * 65536:
                parts = [np.concatenate(parts)]
            for part in parts:
                archive.write(np.ascontiguousarray(part).reshape(-1).view(np.uint8))


class _WriteAborted(Exception):
    """The run stopped (cancelled or failed): the writer drops its temporary file."""
