"""LiteLLM custom providers for in-process models: the embedded llama.cpp model and the scripted one.

Imported only when a model is first called (LiteLLM takes seconds to import).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import EmbeddingResponse, ModelResponse, Usage

from routing.embedded import Completion

#: A backend takes chat messages and call parameters and returns a completion (blocking).
Backend = Callable[[list[dict[str, str]], dict[str, Any]], Completion]
T = TypeVar("T")
#: An embedding backend takes texts and returns one vector each (blocking).
EmbedBackend = Callable[[list[str]], list[list[float]]]


def _params(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call parameters plus the caller's metadata (LiteLLM keeps them apart)."""
    metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
    return {**(kwargs.get("optional_params") or {}), "metadata": metadata}


def _pick(table: dict[str, T], model: str, what: str) -> T:
    """The backend named by ``<provider>/<name>``."""
    name = model.split("/", 1)[-1]
    if name not in table:
        raise ValueError(f"no in-process {what} named {name!r}; known: {', '.join(table)}")
    return table[name]


def _free(response: ModelResponse | EmbeddingResponse) -> None:
    """A model of this machine costs nothing, said on its response: LiteLLM takes a response's own
    cost as is instead of pricing it again from its price map at each call (see
    ``LiteLLMRouter._import``, which also puts these models in the map)."""
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict):
        hidden["response_cost"] = 0.0


class InProcessProvider(CustomLLM):
    """Serves ``<provider>/<model>`` deployments from backends living in this process."""

    def __init__(self, backends: dict[str, Backend], embedders: dict[str, EmbedBackend]) -> None:
        super().__init__()
        self._backends = backends
        self._embedders = embedders

    def _backend(self, model: str) -> Backend:
        return _pick(self._backends, model, "model")

    @staticmethod
    def _fill(model_response: ModelResponse, model: str, done: Completion) -> ModelResponse:
        model_response.choices[0].message.content = done.text
        model_response.model = model
        model_response.usage = Usage(  # type: ignore[attr-defined]  # set dynamically by LiteLLM
            prompt_tokens=done.tokens_in,
            completion_tokens=done.tokens_out,
            total_tokens=done.tokens_in + done.tokens_out,
        )
        _free(model_response)
        return model_response

    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        done = self._backend(model)(messages, _params(kwargs))
        return self._fill(kwargs["model_response"], model, done)

    async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        backend = self._backend(model)
        done = await asyncio.to_thread(backend, messages, _params(kwargs))
        return self._fill(kwargs["model_response"], model, done)

    def _embedder(self, model: str) -> EmbedBackend:
        return _pick(self._embedders, model, "embedding model")

    @staticmethod
    def _fill_embeddings(
        response: EmbeddingResponse, model: str, texts: list[str], vectors: list[list[float]]
    ) -> EmbeddingResponse:
        response.model = model
        response.data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(len(t.split()) for t in texts)
        response.usage = Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens)
        _free(response)
        return response

    def embedding(self, model: str, input: list[Any], *args: Any, **kwargs: Any) -> EmbeddingResponse:  # noqa: A002
        texts = [str(t) for t in input]
        return self._fill_embeddings(kwargs["model_response"], model, texts, self._embedder(model)(texts))

    async def aembedding(self, model: str, input: list[Any], *args: Any, **kwargs: Any) -> EmbeddingResponse:  # noqa: A002
        texts = [str(t) for t in input]
        vectors = await asyncio.to_thread(self._embedder(model), texts)
        return self._fill_embeddings(kwargs["model_response"], model, texts, vectors)
