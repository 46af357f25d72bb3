"""The shipped text embedder: real onnxruntime on the int8 all-MiniLM-L6-v2 file, no Django."""

import subprocess
import sys

import numpy as np
import pytest

from workers.embedding import embed_texts, embedding_dimension, shipped_model_path, shipped_model_sha256
from workers.inference import SessionCache

PARAPHRASES = [
    ("A man is playing a guitar.", "Someone plays an acoustic guitar."),
    ("The cat sits on the mat.", "A kitten is resting on the rug."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
]
UNRELATED = [
    ("A man is playing a guitar.", "The quarterly tax filing deadline is in April."),
    ("The cat sits on the mat.", "Quantum computers use qubits."),
    ("How do I reset my password?", "The recipe needs two cups of flour."),
]


@pytest.fixture(scope="module")
def embed():
    cache = SessionCache(1 << 30)

    def run(texts, **kwargs):
        return embed_texts(
            texts, model_path=shipped_model_path(), sha256=shipped_model_sha256(), session_cache=cache, **kwargs
        )

    return run


def test_vectors_are_unit_length_with_384_dimensions(embed):
    vectors = embed(["hello world", "a second, rather longer sentence about databases"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_close_and_unrelated_sentences_are_not(embed):
    for left, right in PARAPHRASES:
        a, b = embed([left, right])
        assert 0.6 <= float(a @ b) <= 0.85, (left, right, float(a @ b))
    for left, right in UNRELATED:
        a, b = embed([left, right])
        assert abs(float(a @ b)) < 0.15, (left, right, float(a @ b))


def test_a_text_gets_the_same_vector_alone_or_in_a_padded_batch(embed):
    texts = [f"memory {i}: " + "word " * (i * 7) for i in range(9)]
    together = embed(texts, batch_size=4)
    alone = np.stack([embed([text])[0] for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_progress_is_reported_per_batch(embed):
    calls = []
    embed([f"text {i}" for i in range(10)], batch_size=4, on_batch=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_a_model_without_token_inputs_is_not_an_embedding_model():
    from workers.embedding import EmbeddingModelUnusable

    with pytest.raises(EmbeddingModelUnusable, match="input_ids"):
        embedding_dimension({"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}], "outputs": []})
    signature = {
        "inputs": [
            {"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in ("input_ids", "attention_mask")
        ],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 384]}],
    }
    assert embedding_dimension(signature) == 384


def test_the_embedder_imports_no_django():
    code = "import sys, workers.embedding, workers.memory_file; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
