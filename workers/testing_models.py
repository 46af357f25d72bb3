"""Small, deterministic ONNX models built in code, for tests and benchmarks of the inference path."""

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnx 1.23 stamps IR 14 by default, which onnxruntime 1.31 refuses (it loads at most 13);
# IR 10 is what every onnxruntime since 1.20 loads, so models built here run everywhere.
DEFAULT_IR_VERSION = 10
DEFAULT_OPSET = 17

MLP_WIDTHS = (384, 1536, 384, 1536, 384)
ATTENTION_DIM = 64
ATTENTION_SEQ_LEN = 16


def build_test_model(
    kind: str,
    path: Path,
    *,
    ir_version: int = DEFAULT_IR_VERSION,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    seq_len: int | None = ATTENTION_SEQ_LEN,
) -> Path:
    """Write the model `kind` ("multi_io", "mlp", "attention") to `path` and return the path.

    `ir_version` and `opset` are stamped as given, so tests can also build models the
    registry must refuse (a future IR version or opset). `seq_len=None` gives the
    attention model a symbolic sequence axis "S".
    """
    builders = {"multi_io": _multi_io_graph, "mlp": _mlp_graph, "attention": _attention_graph}
    if kind not in builders:
        raise ValueError(f"unknown test model kind {kind!r}; choose one of {sorted(builders)}")
    rng = np.random.default_rng(seed)
    graph = builders[kind](rng, seq_len=seq_len)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="switchyard-tests",
        producer_version="1",
    )
    model.ir_version = ir_version
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def _weight(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> TensorProto:
    # Scaled by 1/sqrt(fan_in) so activations stay O(1) through the layers and
    # float comparisons in tests keep a meaningful relative tolerance.
    values = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[0]).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _multi_io_graph(rng: np.random.Generator, **_) -> onnx.GraphProto:
    # Two inputs of different dtypes sharing the batch axis "N", two outputs of different
    # dtypes: enough to exercise signature inspection, validation and output writing.
    initializers = [
        _weight(rng, "W", (4, 8)),
        numpy_helper.from_array(rng.standard_normal(8, dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "sum_axes"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["xwb"]),
        helper.make_node("Relu", ["xwb"], ["y"]),
        helper.make_node("ReduceSum", ["ids", "sum_axes"], ["ids_sum"], keepdims=1),
    ]
    return helper.make_graph(
        nodes,
        "multi_io",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
        ],
        outputs=[
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("ids_sum", TensorProto.INT64, ["N", 1]),
        ],
        initializer=initializers,
    )


def _mlp_graph(rng: np.random.Generator, **_) -> onnx.GraphProto:
    nodes, initializers = [], []
    current = "x"
    layers = list(itertools.pairwise(MLP_WIDTHS))
    for index, (fan_in, fan_out) in enumerate(layers):
        initializers.append(_weight(rng, f"W{index}", (fan_in, fan_out)))
        initializers.append(numpy_helper.from_array(np.zeros(fan_out, dtype=np.float32), f"b{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], [f"h{index}_mm"]))
        last = index == len(layers) - 1
        added = "y" if last else f"h{index}_pre"
        nodes.append(helper.make_node("Add", [f"h{index}_mm", f"b{index}"], [added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"h{index}"]))
            current = f"h{index}"
    return helper.make_graph(
        nodes,
        "mlp",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", MLP_WIDTHS[0]])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", MLP_WIDTHS[-1]])],
        initializer=initializers,
    )


def _attention_graph(rng: np.random.Generator, *, seq_len: int | None, **_) -> onnx.GraphProto:
    dim = ATTENTION_DIM
    seq = seq_len if seq_len is not None else "S"
    initializers = [_weight(rng, name, (dim, dim)) for name in ("Wq", "Wk", "Wv", "Wo")]
    initializers.append(numpy_helper.from_array(np.array(1.0 / np.sqrt(dim), dtype=np.float32), "scale"))
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"]),
        helper.make_node("MatMul", ["x", "Wk"], ["k"]),
        helper.make_node("MatMul", ["x", "Wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["context"]),
        helper.make_node("MatMul", ["context", "Wo"], ["y"]),
    ]
    return helper.make_graph(
        nodes,
        "attention",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, dim])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, dim])],
        initializer=initializers,
    )
