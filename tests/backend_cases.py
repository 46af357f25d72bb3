"""The ONNX backend test cases shipped inside the installed `onnx` wheel, and how bare onnxruntime does on them.

Each case is a folder under `onnx/backend/test/data/<group>/<case>/` with `model.onnx` and
`test_data_set_N/{input,output}_K.pb`. onnx 1.23's wheel ships the `simple`,
`pytorch-converted` and `pytorch-operator` groups in that layout (no `node` folder);
`light` and `real` hold no test data sets and are skipped.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(onnx.__file__).parent / "backend" / "test" / "data"
GROUPS = ("node", "simple", "pytorch-converted", "pytorch-operator")
# The tolerances of onnx's own backend test runner (onnx/backend/test/runner).
RTOL, ATOL = 1e-3, 1e-7


@dataclass(frozen=True)
class DataSet:
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


@dataclass(frozen=True)
class BackendCase:
    group: str
    name: str
    model_path: Path

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"

    def data_sets(self) -> list[DataSet]:
        return [
            DataSet(_read_tensors(folder, "input"), _read_tensors(folder, "output"))
            for folder in sorted(self.model_path.parent.glob("test_data_set_*"))
        ]


def _read_tensors(folder: Path, role: str) -> list[np.ndarray]:
    arrays = []
    for path in sorted(folder.glob(f"{role}_*.pb"), key=lambda p: int(p.stem.split("_")[-1])):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        arrays.append(numpy_helper.to_array(tensor))
    return arrays


def all_cases() -> list[BackendCase]:
    cases = []
    for group in GROUPS:
        for model in sorted((ROOT / group).glob("*/model.onnx")):
            if any(model.parent.glob("test_data_set_*")):
                cases.append(BackendCase(group, model.parent.name, model))
    return cases


def feed_names(session: ort.InferenceSession) -> list[str]:
    return [arg.name for arg in session.get_inputs()]


def outputs_match(got: np.ndarray, expected: np.ndarray) -> str | None:
    """None when `got` is `expected` within the backend runner's tolerances, else what differs."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return f"shape {list(got.shape)}, expected {list(expected.shape)}"
    if expected.dtype.kind in "fc":
        if not np.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
            return f"values differ (max abs difference {np.nanmax(np.abs(got - expected))})"
        return None
    if expected.dtype.kind in "OUS":
        same = np.array_equal(got.astype(str), expected.astype(str))
    else:
        same = got.dtype == expected.dtype and np.array_equal(got, expected)
    return None if same else f"values differ ({got.dtype} vs {expected.dtype})"


@functools.cache
def bare_onnxruntime_passes(case: BackendCase) -> bool:
    """Whether the installed onnxruntime, with nothing of ours around it, gives the reference outputs."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(case.model_path), sess_options=options, providers=["CPUExecutionProvider"])
        for data in case.data_sets():
            feeds = dict(zip(feed_names(session), data.inputs, strict=False))
            got = session.run(None, feeds)
            if len(got) != len(data.outputs) or any(
                outputs_match(g, e) for g, e in zip(got, data.outputs, strict=True)
            ):
                return False
    except Exception:  # onnxruntime's own error types: this case is not one onnxruntime passes
        return False
    return True
