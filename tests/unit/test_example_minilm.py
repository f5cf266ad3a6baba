"""examples/rag/minilm.py, the numpy all-MiniLM-L6-v2 of the RAG example, against the published
sentence-transformers figures."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

# One BLAS thread (read when numpy is first imported, just below): the products here are small,
# and OpenBLAS's threads spin and slow everything down tenfold on a busy 2-core runner.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest

MINILM_PATH = Path(__file__).resolve().parents[2] / "examples" / "rag" / "minilm.py"

# The sentence-transformers README quickstart with all-MiniLM-L6-v2:
# model.similarity(embeddings, embeddings) for these three sentences.
SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
REFERENCE = np.array([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]])


def load_minilm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minilm", MINILM_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


minilm = load_minilm()


@pytest.fixture(scope="module")
def model() -> Any:
    return minilm.MiniLM()


def test_reference_similarities(model: Any) -> None:
    embeddings = model.encode(SENTENCES)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    assert model.dimension == 384
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embeddings @ embeddings.T, REFERENCE, atol=1e-3)


def test_batch_equals_single(model: Any) -> None:
    texts = [*SENTENCES, "ok", "How do I scale pods automatically based on CPU utilization? " * 4]
    batch = model.encode(texts)
    for text, vector in zip(texts, batch, strict=True):
        np.testing.assert_allclose(model.encode([text])[0], vector, atol=1e-5)


def test_long_text_is_truncated(model: Any) -> None:
    long = "autoscaling " * 300  # over 256 tokens
    assert len(model.tokenizer.encode(long).ids) == model.max_length == 256
    vectors = model.encode([long, long + "kubernetes " * 50])
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    # the tokens past 256 are dropped: more text at the end gives the same vector
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-5)


def test_empty_inputs(model: Any) -> None:
    assert model.encode([]).shape == (0, 384)
    np.testing.assert_allclose(np.linalg.norm(model.encode([""]), axis=1), 1.0, atol=1e-6)


def test_erf() -> None:
    x = np.linspace(-5, 5, 2001, dtype=np.float32)
    expected = np.array([math.erf(float(v)) for v in x])
    assert np.abs(minilm.erf(x) - expected).max() < 1e-6
