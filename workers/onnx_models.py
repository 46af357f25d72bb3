"""Inspects and validates an uploaded ONNX model: size, format, external data, versions, checker, runtime load.

`onnx` and `onnxruntime` are imported where a model is read, not with this module: `onnx` alone
takes ~0.6 s to import (its ml_dtypes), and every command and worker that merely names a
TensorSpec would pay it at start (`manage.py jobs --help`: 2.45 s before, 1.9 s after).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workers.errors import JobError

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

logger = logging.getLogger(__name__)

DEFAULT_DOMAIN = "ai.onnx"
# There is no opset floor here: what the installed onnxruntime loads is accepted, and the
# real session load at upload refuses the rest with onnxruntime's reason (it has kernels for
# many opset-6 models, not all). This is only the opset of the probe models below.
PROBE_OPSET = 7
# Below this opset a missing kernel usually means onnxruntime dropped the operator's old
# version (AveragePool-1, Gemm-6, Add-6 with `broadcast`): converting the model helps.
OLD_OPSET = 10

# Used only when the probe below cannot read the limits out of onnxruntime's refusal (its
# wording changed): (max IR version, max default-domain opset) per onnxruntime minor
# version, as measured with the probe. Unknown versions get the most recent row at or
# below them, then the oldest row: refusing a model that would have loaded is better
# than accepting one that fails on every worker.
KNOWN_RUNTIME_LIMITS: dict[tuple[int, int], tuple[int, int]] = {
    (1, 31): (13, 26),
}

_READ_CHUNK_BYTES = 1 << 20


class ModelValidationError(JobError):
    """The uploaded file is not a model the workers can run; `code` says which check refused it."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, numpy dtype name ("float32", "int64", "string"), shape.

    `shape` is None when the model does not declare a rank; each dim is an int (fixed),
    a str (a symbolic dim such as "N", shared by name across inputs) or None (unknown).
    """

    name: str
    dtype: str
    shape: list[int | str | None] | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        shape = data.get("shape")
        return cls(name=data["name"], dtype=data["dtype"], shape=list(shape) if shape is not None else None)


@dataclass(frozen=True)
class ModelInfo:
    sha256: str
    size_bytes: int
    ir_version: int
    opset: int | None  # of the default (ai.onnx) domain; None when the model imports only other domains
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # What the upload-time probe found (see `probe_batching`): whether jobs may split the rows.
    batching: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RuntimeLimits:
    runtime_version: str
    max_ir_version: int
    max_opset: int
    source: str  # "probe" (read from onnxruntime itself) or "table" (KNOWN_RUNTIME_LIMITS)


def inspect_model(path: Path, *, max_bytes: int) -> ModelInfo:
    """Validate the ONNX file at `path` and describe it; raise ModelValidationError on the first refusal.

    Checks run cheapest first, and version checks run before the ONNX checker so a model
    from a newer exporter is told which version it needs rather than a checker failure.
    Nothing is written to disk: the runtime load is done from the bytes in memory.
    """
    path = Path(path)
    data, sha256 = _read_within_limit(path, max_bytes=max_bytes)
    model = _parse_model(data)
    _refuse_external_data(model)
    limits = runtime_limits()
    _check_ir_version(model.ir_version, limits)
    opset = _default_opset(model)
    _check_opset(opset, limits)
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelValidationError("checker_failed", f"the ONNX checker refused the model: {_one_line(exc)}") from exc
    session = _check_runtime_load(data, opset)
    producer = " ".join(part for part in (model.producer_name, model.producer_version) if part)
    initializer_names = {tensor.name for tensor in model.graph.initializer}
    # Since IR 4 a graph input with an initializer is an optional override, not a
    # required input: callers feed only the others.
    inputs = [_tensor_spec(value, "input") for value in model.graph.input if value.name not in initializer_names]
    outputs = [_tensor_spec(value, "output") for value in model.graph.output]
    _check_row_size(inputs)
    return ModelInfo(
        sha256=sha256,
        size_bytes=len(data),
        ir_version=model.ir_version,
        opset=opset,
        producer=producer,
        inputs=inputs,
        outputs=outputs,
        batching=probe_batching(session, inputs),
    )


def _read_within_limit(path: Path, *, max_bytes: int) -> tuple[bytes, str]:
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelValidationError(
            "too_large",
            f"the model is {size} bytes; the limit is {max_bytes} bytes",
            {"size_bytes": size, "max_bytes": max_bytes},
        )
    digest = hashlib.sha256()
    chunks, total = [], 0
    with path.open("rb") as file:
        # Read at most one byte past the limit, in case the file grew after the stat.
        while chunk := file.read(min(_READ_CHUNK_BYTES, max_bytes + 1 - total)):
            digest.update(chunk)
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ModelValidationError(
                    "too_large",
                    f"the model is more than {max_bytes} bytes; the limit is {max_bytes} bytes",
                    {"max_bytes": max_bytes},
                )
    return b"".join(chunks), digest.hexdigest()


def _parse_model(data: bytes) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise ModelValidationError("not_onnx", "the file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        problem = _diagnose_wire_format(data)
        raise ModelValidationError(problem.code, problem.message) from exc
    # Protobuf parses many byte strings without complaint (unknown fields are kept), so a
    # successful parse is not enough: an ONNX model has an IR version and a graph.
    if model.ir_version <= 0 or not model.HasField("graph"):
        missing = "an IR version" if model.ir_version <= 0 else "a graph"
        raise ModelValidationError("not_onnx", f"the file is not an ONNX model: it has no {missing}")
    return model


@dataclass(frozen=True)
class _WireProblem:
    code: str
    message: str


# ModelProto's top-level fields by number, with the wire type each must use
# (0 = varint for int64 fields, 2 = length-delimited for strings and messages).
@functools.cache
def _model_fields() -> dict[int, tuple[str, int]]:
    import onnx

    return {
        field.number: (field.name, 0 if field.type == field.TYPE_INT64 else 2)
        for field in onnx.ModelProto.DESCRIPTOR.fields
    }


def _diagnose_wire_format(data: bytes) -> _WireProblem:
    """Tell a cut-off ONNX file from a file that was never one, by walking ModelProto's top-level fields.

    A truncated model is a run of well-formed ModelProto fields, starting with the IR
    version, whose last field runs past the end of the file. Anything else that fails to
    parse is not ONNX: random bytes almost never form valid ModelProto field keys.
    """
    position, seen_ir_version = 0, False
    while position < len(data):
        key, after_key = _read_varint(data, position)
        if key is None:
            return _WireProblem("not_onnx", f"the file is not an ONNX model (bad field key at byte {position})")
        number, wire_type = key >> 3, key & 7
        expected = _model_fields().get(number)
        if expected is None or expected[1] != wire_type:
            return _WireProblem(
                "not_onnx", f"the file is not an ONNX model (byte {position} does not start an ONNX model field)"
            )
        name = expected[0]
        if wire_type == 0:
            value, position = _read_varint(data, after_key)
            if value is None:
                return _truncated_or_not(seen_ir_version, f"the file ends inside field '{name}'")
            seen_ir_version |= number == 1
            continue
        length, start = _read_varint(data, after_key)
        if length is None:
            return _truncated_or_not(seen_ir_version, f"the file ends inside the length of field '{name}'")
        if start + length > len(data):
            return _truncated_or_not(
                seen_ir_version,
                f"field '{name}' at byte {position} declares {length} bytes but only {len(data) - start} remain",
            )
        position = start + length
    return _WireProblem("not_onnx", "the file is not a valid ONNX model (corrupt data inside a top-level field)")


def _truncated_or_not(seen_ir_version: bool, detail: str) -> _WireProblem:
    if seen_ir_version:
        return _WireProblem("truncated", f"the model file is truncated: {detail}")
    return _WireProblem("not_onnx", "the file is not an ONNX model")


def _read_varint(data: bytes, position: int) -> tuple[int | None, int]:
    value, shift = 0, 0
    while position < len(data) and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return None, position


def _refuse_external_data(model: onnx.ModelProto) -> None:
    # Every external reference is refused, not only those pointing outside the upload: the
    # registry stores one file per version, so any other file the model names would be
    # missing on the workers, and a path such as "../../etc/passwd" would read host files.
    from onnx import TensorProto

    for owner, tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            raise ModelValidationError(
                "external_data",
                f"tensor '{tensor.name}' ({owner}) keeps its data in an external file (location {location!r}); "
                "external data is not accepted: save the model with its weights inside the .onnx file",
                {"tensor": tensor.name, "location": location},
            )


def _all_tensors(model: onnx.ModelProto):
    """Every TensorProto the model holds: initializers, sparse ones, constants, in subgraphs and functions."""
    graphs = [model.graph]
    for training in model.training_info:
        graphs.extend([training.initialization, training.algorithm])
    for graph in graphs:
        yield from _graph_tensors(graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node, f"function '{function.name}'")


def _graph_tensors(graph: onnx.GraphProto):
    where = f"graph '{graph.name}'"
    for tensor in graph.initializer:
        yield f"initializer of {where}", tensor
    for sparse in graph.sparse_initializer:
        yield f"sparse initializer of {where}", sparse.values
        yield f"sparse initializer of {where}", sparse.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: onnx.NodeProto, where: str):
    owner = f"attribute of node '{node.name or node.op_type}' in {where}"
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield owner, attribute.t
        for tensor in attribute.tensors:
            yield owner, tensor
        if attribute.HasField("sparse_tensor"):
            yield owner, attribute.sparse_tensor.values
            yield owner, attribute.sparse_tensor.indices
        for sparse in attribute.sparse_tensors:
            yield owner, sparse.values
            yield owner, sparse.indices
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)


def _check_ir_version(ir_version: int, limits: RuntimeLimits) -> None:
    if ir_version > limits.max_ir_version:
        raise ModelValidationError(
            "unsupported_ir_version",
            f"the model has IR version {ir_version}; onnxruntime {limits.runtime_version} loads IR versions up to "
            f"{limits.max_ir_version}: export it again with ir_version <= {limits.max_ir_version}",
            {"ir_version": ir_version, "max_ir_version": limits.max_ir_version},
        )


def _default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", DEFAULT_DOMAIN):
            return entry.version
    return None


def _check_opset(opset: int | None, limits: RuntimeLimits) -> None:
    if opset is None:
        return
    if opset > limits.max_opset:
        raise ModelValidationError(
            "unsupported_opset",
            f"the model uses opset {opset} of the {DEFAULT_DOMAIN} domain; onnxruntime {limits.runtime_version} "
            f"supports opsets up to {limits.max_opset}: convert it with "
            f"onnx.version_converter.convert_version(model, {limits.max_opset})",
            {"opset": opset, "max_opset": limits.max_opset},
        )


# The most one row of a model's inputs may take (a model with a fixed first axis: its whole
# input). Symbolic dimensions other than the batch axis count as 1, so this is a floor of
# what a job feeds: a model whose single row is larger could never run on a worker, and
# generating samples or probe rows for it would exhaust memory.
MAX_INPUT_ROW_BYTES = 256 * 1024 * 1024


def _check_row_size(inputs: list[TensorSpec]) -> None:
    total = 0
    for spec in inputs:
        dims = spec.shape or []
        per_row = dims[1:] if dims and not isinstance(dims[0], int) else dims
        itemsize = 8 if spec.dtype == "string" else _itemsize(spec.dtype)
        size = math.prod(dim if isinstance(dim, int) else 1 for dim in per_row) * itemsize
        total += size
        if total > MAX_INPUT_ROW_BYTES:
            raise ModelValidationError(
                "input_too_large",
                f"input '{spec.name}' has shape {dims}: one row of the inputs takes at least {total} bytes; the "
                f"limit is {MAX_INPUT_ROW_BYTES} bytes per row",
                {"input": spec.name, "shape": dims, "row_bytes": total, "max_row_bytes": MAX_INPUT_ROW_BYTES},
            )


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # an ONNX type numpy does not know (float8, int4): count it as one byte
        return 1


def _check_runtime_load(data: bytes, opset: int | None) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the reason is returned to the uploader, not logged
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        reason = onnxruntime_reason(exc)
        if opset is not None and opset < OLD_OPSET and "Could not find an implementation" in reason:
            # Old opsets are where onnxruntime lacks kernels; the same graph at a newer opset runs.
            reason += (
                f". onnxruntime {ort.__version__} has no kernel for this operator at opset {opset}: convert the model "
                f"to a newer opset with onnx.version_converter.convert_version(model, {max(opset + 1, 13)}) "
                "and upload it again"
            )
        raise ModelValidationError(
            "runtime_load_failed",
            f"onnxruntime {ort.__version__} cannot load the model: {reason}",
            {"onnxruntime_error": str(exc)},
        ) from exc


_ORT_ERROR_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
# "/onnxruntime_src/onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model(<args>) ", anywhere in the
# message (a run-time error quotes the kernel's own location in the middle), with an optional return type.
_ORT_SOURCE_LOCATION = re.compile(r"\S+\.(?:cc|h|cpp|hpp):\d+ (?:(?:[\w:]+ )?[\w:~]+\([^()]*\) )?")


def onnxruntime_reason(exc: Exception) -> str:
    """onnxruntime's message without its status prefix and C++ source locations."""
    message = _ORT_ERROR_PREFIX.sub("", str(exc).strip())
    return _ORT_SOURCE_LOCATION.sub("", message).strip()


def _tensor_spec(value: onnx.ValueInfoProto, role: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        # The executor feeds and writes numpy arrays only; a sequence or map would fail on
        # every job, so it is refused at upload.
        raise ModelValidationError(
            "unsupported_signature",
            f"{role} '{value.name}' is a {kind or 'untyped value'}; only tensor inputs and outputs are supported",
            {"name": value.name, "type": kind},
        )
    tensor_type = value.type.tensor_type
    shape = None
    if tensor_type.HasField("shape"):
        shape = [
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor_type.shape.dim
        ]
    return TensorSpec(name=value.name, dtype=numpy_dtype_name(tensor_type.elem_type), shape=shape)


def numpy_dtype_name(elem_type: int) -> str:
    """The numpy dtype name for an ONNX element type; "string" for ONNX strings (numpy holds them as objects)."""
    import onnx
    from onnx import TensorProto

    if elem_type == TensorProto.STRING:
        return "string"
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        return TensorProto.DataType.Name(elem_type).lower()


@functools.cache
def runtime_limits() -> RuntimeLimits:
    """The highest IR version and default-domain opset the installed onnxruntime loads.

    onnxruntime exposes neither number, and `onnx.defs.onnx_opset_version()` (what the
    onnx package knows) runs ahead of it (28 vs 26 for onnx 1.23 / onnxruntime 1.31). So we
    ask onnxruntime itself: load two tiny models stamped with absurdly high versions and
    read the limit from the refusal ("max supported IR version: 13", "Current official
    support for domain ai.onnx is till opset 26"). Cached: done once per process, ~1 ms.
    """
    import onnxruntime as ort

    max_ir = _probe_limit(ir_version=1_000_000, opset=PROBE_OPSET, pattern=r"max supported IR version: (\d+)")
    max_opset = _probe_limit(ir_version=7, opset=1_000_000, pattern=r"support for domain ai\.onnx is till opset (\d+)")
    if max_ir is not None and max_opset is not None:
        return RuntimeLimits(ort.__version__, max_ir, max_opset, "probe")
    table_ir, table_opset = _limits_from_table(ort.__version__)
    logger.warning(
        "onnx_models.runtime_limits_from_table",
        extra={"onnxruntime": ort.__version__, "max_ir_version": table_ir, "max_opset": table_opset},
    )
    return RuntimeLimits(
        ort.__version__,
        max_ir if max_ir is not None else table_ir,
        max_opset if max_opset is not None else table_opset,
        "table",
    )


def _probe_limit(*, ir_version: int, opset: int, pattern: str) -> int | None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    value = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusal is expected: keep it out of the logs
    try:
        ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the refusal is the answer
        match = re.search(pattern, str(exc))
        return int(match.group(1)) if match else None
    return None


def _limits_from_table(version: str) -> tuple[int, int]:
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    at_or_below = [key for key in KNOWN_RUNTIME_LIMITS if key <= numbers]
    key = max(at_or_below) if at_or_below else min(KNOWN_RUNTIME_LIMITS)
    return KNOWN_RUNTIME_LIMITS[key]


def _one_line(exc: Exception, limit: int = 1000) -> str:
    # The checker spreads one reason over several lines (node dumps); an error message is one line.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the batching probe ------------------------------------------------------------------------

PROBE_ROWS = 3
# Size of a symbolic dimension other than the batch axis in generated probe inputs.
PROBE_OTHER_DIM = 2
# Generated probe inputs stay this small; a model whose 3 rows would be larger is not
# split (it runs whole), rather than making every upload allocate its inputs.
PROBE_MAX_BYTES = 16 * 1024 * 1024
_INDEPENDENT = "rows are independent: a batch and its rows one by one give the same outputs"


def probe_batching(session: ort.InferenceSession, inputs: list[TensorSpec]) -> dict:
    """Whether jobs may split this model's rows into batches, decided once, at upload.

    Splitting is safe only where every input has a batch axis (a first axis that is not
    fixed) and the model treats rows independently. That is tested, not assumed: a few
    generated rows run as one batch and as single rows must give the same outputs, each
    output following the batch axis. A model that mixes rows (softmax or a mean over the
    batch axis, batch statistics) or has no batch axis is never split: its input runs
    whole. Anything the probe cannot establish counts as "do not split". Returns
    {batch_axis, rows_independent, split, zero_rows, reason}; `zero_rows` says whether a
    0-row input runs (submit refuses one where it does not).
    """
    result = {"batch_axis": False, "rows_independent": None, "split": False, "zero_rows": False}
    if not inputs:
        return {**result, "reason": "the model has no inputs, so no batch axis: it runs whole"}
    without_axis = [spec.name for spec in inputs if not spec.shape or isinstance(spec.shape[0], int)]
    if without_axis:
        names = ", ".join(repr(name) for name in without_axis)
        return {**result, "reason": f"no batch axis: input {names} has no variable first axis; it runs whole"}
    result["batch_axis"] = True
    rng = np.random.default_rng(0)
    try:
        feeds = _probe_feeds(inputs, rng)
    except _ProbeTooLarge as exc:
        return {**result, "reason": f"not probed, so never split: {exc}"}
    except (TypeError, ValueError) as exc:  # an element type numpy cannot generate
        return {**result, "reason": f"not probed, so never split: cannot generate probe inputs ({exc})"}
    names = [output.name for output in session.get_outputs()]
    result["zero_rows"] = _runs(session, names, {name: array[:0] for name, array in feeds.items()})
    try:
        whole = session.run(names, feeds)
        again = session.run(names, feeds)
        single = [
            session.run(names, {name: array[row : row + 1] for name, array in feeds.items()})
            for row in range(PROBE_ROWS)
        ]
    except Exception as exc:  # onnxruntime's own error types: the generated values did not suit the model
        reason = f"the probe could not run {PROBE_ROWS} generated rows ({onnxruntime_reason(exc)}): never split"
        return {**result, "reason": reason[:1000]}
    if not all(_same(a, b) for a, b in zip(whole, again, strict=True)):
        return {**result, "reason": "two identical runs gave different outputs, so row independence cannot be tested"}
    for index, name in enumerate(names):
        value = whole[index]
        parts = [outputs[index] for outputs in single]
        if (
            value.ndim == 0
            or value.shape[0] != PROBE_ROWS
            or any(part.ndim == 0 or part.shape[0] != 1 for part in parts)
        ):
            reason = f"output {name!r} does not follow the batch axis (shape {list(value.shape)} for {PROBE_ROWS} rows)"
            return {**result, "rows_independent": False, "reason": reason}
        if not _same(value, np.concatenate(parts)):
            reason = f"rows are not independent: output {name!r} of a batch differs from its rows run one by one"
            return {**result, "rows_independent": False, "reason": reason}
    return {**result, "rows_independent": True, "split": True, "reason": _INDEPENDENT}


class _ProbeTooLarge(Exception):
    pass


def _probe_feeds(inputs: list[TensorSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds, total = {}, 0
    for spec in inputs:
        assert spec.shape is not None
        shape = [PROBE_ROWS] + [dim if isinstance(dim, int) else PROBE_OTHER_DIM for dim in spec.shape[1:]]
        count = math.prod(shape)
        total += count * (8 if spec.dtype == "string" else np.dtype(spec.dtype).itemsize)
        if total > PROBE_MAX_BYTES:
            raise _ProbeTooLarge(f"{PROBE_ROWS} rows of the inputs would take more than {PROBE_MAX_BYTES} bytes")
        feeds[spec.name] = _probe_values(spec.dtype, shape, rng)
    return feeds


def _probe_values(dtype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    # Small positive values: valid for logs, square roots and indices into small tensors.
    if dtype == "string":
        return rng.choice(np.array(["a", "b", "c"], dtype=object), size=shape)
    kind = np.dtype(dtype).kind
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if kind in "iu":
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.uniform(0.25, 1.0, size=shape).astype(dtype)


def _runs(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray]) -> bool:
    try:
        session.run(names, feeds)
    except Exception:  # onnxruntime's own error types: this model cannot run these inputs
        return False
    return True


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        # Different batch sizes take different kernel paths; a few ulps of difference is not a dependency.
        return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True))
    return bool(np.array_equal(a, b))
