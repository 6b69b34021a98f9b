"""LiteLLM custom providers for in-process models: the embedded llama.cpp model and the scripted one.

Imported only when a model is first called (LiteLLM takes seconds to import).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import ModelResponse, Usage

from routing.embedded import Completion

#: A backend takes chat messages and call parameters and returns a completion (blocking).
Backend = Callable[[list[dict[str, str]], dict[str, Any]], Completion]


def _params(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call parameters plus the caller's metadata (LiteLLM keeps them apart)."""
    metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
    return {**(kwargs.get("optional_params") or {}), "metadata": metadata}


class InProcessProvider(CustomLLM):
    """Serves ``<provider>/<model>`` deployments from backends living in this process."""

    def __init__(self, backends: dict[str, Backend]) -> None:
        super().__init__()
        self._backends = backends

    def _backend(self, model: str) -> Backend:
        name = model.split("/", 1)[-1]
        if name not in self._backends:
            raise ValueError(f"no in-process model named {name!r}; known: {', '.join(self._backends)}")
        return self._backends[name]

    @staticmethod
    def _fill(model_response: ModelResponse, model: str, done: Completion) -> ModelResponse:
        model_response.choices[0].message.content = done.text
        model_response.model = model
        model_response.usage = Usage(  # type: ignore[attr-defined]  # set dynamically by LiteLLM
            prompt_tokens=done.tokens_in,
            completion_tokens=done.tokens_out,
            total_tokens=done.tokens_in + done.tokens_out,
        )
        return model_response

    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        done = self._backend(model)(messages, _params(kwargs))
        return self._fill(kwargs["model_response"], model, done)

    async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        backend = self._backend(model)
        done = await asyncio.to_thread(backend, messages, _params(kwargs))
        return self._fill(kwargs["model_response"], model, done)
