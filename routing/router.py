"""The LiteLLM router: aliases → ordered deployments with fallback, as a ``ChatModel``.

LiteLLM is imported on the first model call, not before: a command that calls no model starts fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from factory.errors import RoutingError
from observability.text import storable
from routing.aliases import LOCAL_PROVIDER, Deployment, embedding_route
from routing.base import EMBED_ALIAS, ChatRequest, ChatResponse
from routing.embedded import Completion, EmbeddedModel
from routing.embeddings import EmbeddedEmbedder
from routing.scripted import ScriptedModel

log = logging.getLogger(__name__)


def _schema_of(params: dict[str, Any]) -> dict[str, Any] | None:
    fmt = params.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None


class LiteLLMRouter:
    """``ChatModel`` over a LiteLLM ``Router``; in-process models are LiteLLM custom providers."""

    def __init__(
        self,
        routes: dict[str, list[Deployment]],
        *,
        embedded: EmbeddedModel | None = None,
        scripted: ScriptedModel | None = None,
        embedder: EmbeddedEmbedder | None = None,
        num_retries: int = 1,
    ) -> None:
        self._routes = routes
        self._embedded = embedded
        self._scripted = scripted
        self._embedder = embedder or EmbeddedEmbedder()
        self._num_retries = num_retries
        self._router: Any = None
        self._building = asyncio.Lock()

    def _backend_embedded(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        if self._embedded is None:
            raise RoutingError("the embedded model is not configured")
        return self._embedded.complete(
            messages,
            json_schema=_schema_of(params),
            max_tokens=int(params.get("max_tokens") or 512),
            temperature=float(params.get("temperature") or 0.2),
        )

    def _backend_scripted(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        if self._scripted is None:
            raise RoutingError("the scripted model is not configured")
        request = params["metadata"]["factory_request"]
        if self._scripted.latency_s:
            time.sleep(self._scripted.latency_s)  # runs in LiteLLM's worker thread, like a real model
        return self._scripted.answer(request)

    async def _ready(self) -> Any:
        """The router, built on first use in a worker thread: importing LiteLLM takes seconds and
        must not stall the event loop (responders and the live stream share it)."""
        if self._router is None:
            async with self._building:
                if self._router is None:
                    await asyncio.to_thread(self._ensure)
        return self._router

    def _ensure(self) -> Any:
        if self._router is not None:
            return self._router
        # No network beyond package registries: use the cost map LiteLLM ships.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm
        from litellm.router import Router

        from routing.providers import InProcessProvider

        provider = InProcessProvider(
            {"smollm2": self._backend_embedded, "scripted": self._backend_scripted}, {"minilm": self._embedder.embed}
        )
        litellm.custom_provider_map = [{"provider": LOCAL_PROVIDER, "custom_handler": provider}]
        litellm.suppress_debug_info = True
        model_list, fallbacks = [], []
        for alias, chain in self._routes.items():
            names = [alias] + [f"{alias}~{i}" for i in range(1, len(chain))]
            for name, deployment in zip(names, chain, strict=True):
                params: dict[str, Any] = {"model": deployment.model}
                if deployment.api_base:
                    params["api_base"] = deployment.api_base
                model_list.append({"model_name": name, "litellm_params": params})
            if len(names) > 1:
                fallbacks.append({alias: names[1:]})
        model_list.append({"model_name": EMBED_ALIAS, "litellm_params": {"model": embedding_route().model}})
        self._router = Router(model_list=model_list, fallbacks=fallbacks, num_retries=self._num_retries)
        return self._router

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        router = await self._ready()
        kwargs: dict[str, Any] = {}
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "task_result", "schema": request.json_schema, "strict": False},
            }
        started = time.perf_counter()
        try:
            response = await router.acompletion(
                model=request.alias,
                messages=[m.model_dump() for m in request.messages],
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                timeout=timeout_s,
                metadata={"factory_request": request},
                **kwargs,
            )
        except Exception as exc:  # LiteLLM raises many types; all mean "no deployment answered"
            # The provider's text is quoted in the stage's audited failure: made storable.
            tried = ", ".join(d.model for d in self._routes.get(request.alias, []))
            raise RoutingError(
                f"no deployment of {request.alias} answered (tried {tried}): {storable(str(exc))}."
                " Check `factory doctor` for model and key status."
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        hidden = getattr(response, "_hidden_params", {}) or {}
        usage = getattr(response, "usage", None)
        return ChatResponse(
            text=response.choices[0].message.content or "",
            alias=request.alias,
            model=str(hidden.get("litellm_model_name") or response.model or ""),
            tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
            tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=float(hidden.get("response_cost") or 0.0),
            latency_ms=latency_ms,
        )

    async def embed(self, texts: list[str], *, timeout_s: float) -> list[list[float]]:
        """Vectors for ``texts`` through the ``local/embed`` alias."""
        if not texts:
            return []
        router = await self._ready()
        try:
            response = await router.aembedding(model=EMBED_ALIAS, input=texts, timeout=timeout_s)
        except Exception as exc:  # LiteLLM raises many types; all mean "no vectors"
            raise RoutingError(f"{EMBED_ALIAS} failed: {storable(str(exc))}. Check `factory doctor`.") from exc
        return [list(item["embedding"]) for item in response.data]
