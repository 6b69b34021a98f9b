"""The router: an alias's chain of deployments, walked in order through LiteLLM, as a ``ChatModel``.

Each deployment is one ``litellm.acompletion`` with its own base, key, timeout, output cap, prices
and structured-output mode; no retries inside it. A timeout, a 429, a 5xx, a refused connection,
garbage or a missing key moves the same call to the next deployment, and the failure is kept on the
response (``fallbacks``) for the ledger, the stage's audit entry and the live events. A deployment
that keeps failing cools down (``routing.cooldowns``) so later calls skip it. A run's calls use the
routing the run started with; other calls use the current routing. ``stream`` walks the same chain
for free text, chunk by chunk (``routing.streaming``).

LiteLLM is imported on the first model call, in a worker thread: a command that calls no model
starts fast, and the import does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from typing import Any, Protocol

from factory.errors import RoutingError
from observability.redact import redact, register_secret
from observability.text import storable
from routing.aliases import embedding_route
from routing.base import EMBED_ALIAS, ChatRequest, ChatResponse, Fallback, Message
from routing.config import EMBEDDED, SCRIPTED, Deployment, KeyRef, RoutingConfig
from routing.cooldowns import Cooldowns
from routing.embedded import Completion, EmbeddedModel
from routing.embeddings import EmbeddedEmbedder
from routing.failures import NoKey, classify, kind_of, refused_schema
from routing.providers_known import LOCAL_PROVIDER
from routing.scripted import ScriptedModel
from routing.streaming import cause, closing, litellm_stream, stream_chain

log = logging.getLogger(__name__)

#: The routing a run started with (None: a run from before routing was recorded).
RunRouting = Callable[[str], Awaitable[RoutingConfig | None]]
#: The current routing, for calls of no run and for new runs.
CurrentRouting = Callable[[], Awaitable[RoutingConfig]]
_KEY_VARIABLES = ("_API_KEY", "_SECRET_KEY", "_PROXY_KEY", "_ACCESS_KEY", "_TOKEN", "_API_TOKEN")
_RUNS_KEPT = 512  # runs whose routing is cached in this process
_UNPRICED: set[str] = set()  # models LiteLLM's price map lacks: pricing them throws, ~0.7 ms each time
_KEPT = 4096  # bound of the per-process sets above and below
#: What LiteLLM 1.106 imports lazily on its first (streamed) OpenAI-compatible call.
_WARM_MODULES = ("openai.resources", "litellm.proxy._types", "litellm.litellm_core_utils.default_encoding")


class KeyResolver(Protocol):
    """Turns a key reference into the key (None when it is not set)."""

    async def resolve(self, ref: KeyRef) -> str | None: ...


class EnvKeys:
    """Keys from environment variables only (a stored secret resolves to None)."""

    async def resolve(self, ref: KeyRef) -> str | None:
        return os.environ.get(ref.env) if ref.env else None


SCHEMA_PROMPT = "\n\nAnswer with one JSON object, and nothing else, valid against this JSON schema:\n```json\n{}\n```"


def with_schema_prompt(messages: list[dict[str, str]], schema: dict[str, Any]) -> list[dict[str, str]]:
    """``messages`` with the schema appended to the system message (JSON mode gives no schema)."""
    note = SCHEMA_PROMPT.format(json.dumps(schema, separators=(",", ":")))
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + note}, *messages[1:]]
    return [{"role": "system", "content": note.strip()}, *messages]


def _schema_of(params: dict[str, Any]) -> dict[str, Any] | None:
    fmt = params.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None


@cache
def _supports_schema(model: str) -> bool:
    import litellm

    try:
        return bool(litellm.supports_response_schema(model=model))
    except Exception:  # an unknown model: LiteLLM cannot say, JSON mode is the safe ask
        return False


class LiteLLMRouter:
    """``ChatModel`` over LiteLLM: aliases → ordered deployments with fallback and cooldowns."""

    def __init__(
        self,
        routing: RoutingConfig,
        *,
        current: CurrentRouting | None = None,
        run_routing: RunRouting | None = None,
        keys: KeyResolver | None = None,
        cooldowns: Cooldowns | None = None,
        embedded: EmbeddedModel | None = None,
        scripted: ScriptedModel | None = None,
        embedder: EmbeddedEmbedder | None = None,
        local_max_tokens: int = 700,
        stream_idle_s: float = 60.0,
    ) -> None:
        """``stream_idle_s``: how long a stream may go silent between chunks (at most the call's timeout)."""
        self._routing = routing
        self._stream_idle_s = stream_idle_s
        self._local_max_tokens = local_max_tokens
        self._current = current
        self._run_routing = run_routing
        self._runs: OrderedDict[str, RoutingConfig] = OrderedDict()
        self._keys = keys or EnvKeys()
        self.cooldowns = cooldowns or Cooldowns()
        self._embedded = embedded
        self._scripted = scripted
        self._embedder = embedder or EmbeddedEmbedder()
        self._litellm: Any = None
        self._building = asyncio.Lock()
        self._no_schema: set[str] = set()  # deployments that refused JSON-schema output

    @property
    def routing(self) -> RoutingConfig:
        """The routing this router was built with (the current one when it was opened)."""
        return self._routing

    @property
    def embedder(self) -> EmbeddedEmbedder:
        """The embedding model of ``local/embed``."""
        return self._embedder

    # -- in-process backends (LiteLLM custom provider) -------------------------------------------

    def _backend_embedded(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        if self._embedded is None:
            raise RoutingError("the embedded model is not configured in this process")
        return self._embedded.complete(
            messages,
            json_schema=_schema_of(params),
            # A call that fell back from a cloud model asks for the cloud's output size: the 135M model
            # gets its own cap instead (the schema is bounded for it inside the model).
            max_tokens=min(int(params.get("max_tokens") or 512), self._local_max_tokens),
            temperature=float(params.get("temperature") or 0.2),
        )

    def _embed_local(self, texts: list[str]) -> list[list[float]]:
        """``local/embed``: all-MiniLM-L6-v2, or hashed vectors when a benchmark's script asks for them."""
        if self._scripted is not None and self._scripted.hashed_embeddings:
            return self._scripted.embed(texts)
        return self._embedder.embed(texts)

    def _backend_scripted(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        if self._scripted is None:
            raise RoutingError("the scripted model is not configured in this process")
        request = params["metadata"]["factory_request"]
        if self._scripted.latency_s:
            time.sleep(self._scripted.latency_s)  # runs in LiteLLM's worker thread, like a real model
        return self._scripted.answer(request)

    async def ready(self) -> Any:
        """LiteLLM, imported and set up on first use in a worker thread: the import takes seconds
        and must not stall the event loop (responders and the live stream share it)."""
        if self._litellm is None:
            async with self._building:
                if self._litellm is None:
                    self._litellm = await asyncio.to_thread(self._import)
        return self._litellm

    def _import(self) -> Any:
        # No network beyond package registries: use the cost map and Anthropic beta headers LiteLLM ships.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
        # LiteLLM's own log handler writes DEBUG and INFO records to stdout (a --json document is then
        # not JSON), past the factory's redaction: quiet during the import, removed after it, so its
        # records reach only the root handlers (stderr, through RedactingFilter).
        os.environ.setdefault("LITELLM_LOG", "WARNING")
        import litellm

        for module in _WARM_MODULES:  # else imported by the first call, on the event loop: a chat frozen ~1 s
            try:
                importlib.import_module(module)
            except ImportError:  # another LiteLLM version's layout: that call pays the import then
                pass
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
            litellm_logger = logging.getLogger(name)
            for handler in list(litellm_logger.handlers):
                litellm_logger.removeHandler(handler)
        # Keys LiteLLM reads from the environment itself (a deployment naming none) are secrets too.
        for name, value in os.environ.items():
            if name.endswith(_KEY_VARIABLES):
                register_secret(value)

        from routing.providers import Backend, EmbedBackend, InProcessProvider

        chat: dict[str, Backend] = {"smollm2": self._backend_embedded, "scripted": self._backend_scripted}
        embedders: dict[str, EmbedBackend] = {"minilm": self._embed_local}
        provider = InProcessProvider(chat, embedders)
        litellm.custom_provider_map = [{"provider": LOCAL_PROVIDER, "custom_handler": provider}]
        # The models of this machine are in LiteLLM's price map, free (their responses say so too,
        # ``routing.providers``): LiteLLM looks up a call's price and, for a cost of 0, diagnoses why;
        # for a model the map lacked, both searched its fallbacks at every call. Together ~30% of a
        # scripted call's CPU in LiteLLM (2.9 -> 2.1 ms a completion, 2.2 -> 1.4 ms an embedding).
        free = {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "cache_creation_input_token_cost": 0.0,
                "cache_read_input_token_cost": 0.0, "litellm_provider": LOCAL_PROVIDER}  # fmt: skip
        litellm.register_model(
            {
                **{f"{LOCAL_PROVIDER}/{name}": {**free, "mode": "chat"} for name in chat},
                **{f"{LOCAL_PROVIDER}/{name}": {**free, "mode": "embedding"} for name in embedders},
            }
        )
        litellm.suppress_debug_info = True
        litellm.drop_params = True  # a provider that lacks a parameter (temperature, ...) is not failed for it
        return litellm

    # -- which routing -------------------------------------------------------------------------

    async def routing_for(self, request: ChatRequest) -> RoutingConfig:
        """The routing of the request's run if it recorded one, else the current routing."""
        if request.run_id and self._run_routing is not None:
            pinned = self._runs.get(request.run_id)
            if pinned is None:
                pinned = await self._run_routing(request.run_id)
                if pinned is not None:
                    self._runs[request.run_id] = pinned
                    if len(self._runs) > _RUNS_KEPT:
                        self._runs.popitem(last=False)
            else:
                self._runs.move_to_end(request.run_id)
            if pinned is not None:
                return pinned
        return await self._current() if self._current is not None else self._routing

    # -- calls ---------------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        litellm = await self.ready()
        routing = await self.routing_for(request)
        hops: list[Fallback] = []
        started = time.perf_counter()
        for deployment, skipped in self.plan(routing.chain(request.alias)):
            if skipped is not None:
                hops.append(skipped)
                continue
            try:
                response = await self.call(litellm, deployment, request, timeout_s)
            except Exception as exc:
                hops.append(self.failed(routing, deployment, request, exc))
                continue
            if not deployment.local:
                self.cooldowns.succeeded(deployment.id)
            return response.model_copy(update={"fallbacks": hops, "latency_ms": (time.perf_counter() - started) * 1000})
        raise self.none_answered(request, hops)

    def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        """``StreamingChatModel``: the alias's chain walked for a free-text answer, chunk by chunk
        (a deployment failing before its first chunk is skipped; after it, ``StreamInterrupted``)."""
        return stream_chain(self, request, timeout_s=timeout_s, idle_s=self._stream_idle_s)

    def plan(self, chain: list[Deployment]) -> list[tuple[Deployment, Fallback | None]]:
        """The chain in order, each deployment with the ``cooling`` hop that skips it (None: call it)."""
        cooling = [d for d in chain if not d.local and self.cooldowns.left(d.id) > 0]
        # Every deployment cooling and none in-process: the one recovering first is tried anyway,
        # rather than failing every call until a cooldown ends.
        spare = self.cooldowns.soonest([d.id for d in cooling]) if len(cooling) == len(chain) else None
        planned: list[tuple[Deployment, Fallback | None]] = []
        for deployment in chain:
            skip = None
            if deployment in cooling and deployment.id != spare:
                left = self.cooldowns.left(deployment.id)
                skip = Fallback(deployment=deployment.id, kind="cooling", reason=f"cooling down {left:.0f}s more")
            planned.append((deployment, skip))
        return planned

    def failed(
        self, routing: RoutingConfig, deployment: Deployment, request: ChatRequest, exc: BaseException
    ) -> Fallback:
        """The hop of a deployment that failed with ``exc``, counted towards its cooldown."""
        exc = cause(exc)
        kind, retry_after = kind_of(exc)
        reason = redact(storable(str(exc)))[:500]
        log.info("%s failed for %s (%s): %s", deployment.id, request.alias, kind, reason)
        if not deployment.local:
            self.cooldowns.failed(deployment.id, kind, routing.cooldown, retry_after_s=retry_after, reason=reason[:120])
        return Fallback(deployment=deployment.id, kind=kind, reason=reason)

    @staticmethod
    def none_answered(request: ChatRequest, hops: list[Fallback]) -> RoutingError:
        tried = "; ".join(f"{h.deployment} ({h.kind}: {h.reason[:200]})" for h in hops) or "no deployment"
        return RoutingError(
            f"no deployment of {request.alias} answered: {tried}. Check `factory routing test` and `factory doctor`.",
            fallbacks=hops,
        )

    def deployment_stream(
        self, litellm: Any, deployment: Deployment, request: ChatRequest, timeout_s: float
    ) -> AsyncIterator[str | ChatResponse]:
        """One deployment's streamed answer: an in-process model's own stream, else LiteLLM's."""
        if deployment.model == SCRIPTED:
            if self._scripted is None:
                raise RoutingError("the scripted model is not configured in this process")
            return self._scripted.stream(request, timeout_s=timeout_s)
        if deployment.model == EMBEDDED:
            return self._embedded_stream(deployment, request)
        return litellm_stream(litellm, self, deployment, request, timeout_s)

    async def _embedded_stream(self, deployment: Deployment, request: ChatRequest) -> AsyncIterator[str | ChatResponse]:
        if self._embedded is None:
            raise RoutingError("the embedded model is not configured in this process")
        cap = min(request.max_tokens, deployment.max_tokens or request.max_tokens, self._local_max_tokens)
        messages = [m.model_dump() for m in request.messages]
        items = self._embedded.stream(messages, max_tokens=cap, temperature=request.temperature)
        async with closing(items):  # a reader that leaves frees the model at once, not when collected
            async for item in items:
                if isinstance(item, str):
                    yield item
                    continue
                yield ChatResponse(
                    text=item.text,
                    alias=request.alias,
                    model=deployment.model,
                    tokens_in=item.tokens_in,
                    tokens_out=item.tokens_out,
                )

    def mode(self, deployment: Deployment) -> str:
        if deployment.structured != "auto":
            return deployment.structured
        if deployment.grammar:
            return "grammar"
        if deployment.model == SCRIPTED or deployment.provider == "litellm_proxy":
            return "json_schema"
        if deployment.id in self._no_schema:  # it refused a JSON schema before: not asked twice a call
            return "json_object"
        return "json_schema" if _supports_schema(deployment.model) else "json_object"

    async def params(self, deployment: Deployment, request: ChatRequest, timeout_s: float) -> dict[str, Any]:
        """LiteLLM's keyword arguments for one call of ``deployment``: output cap, timeout, no retries,
        base and key (raises ``NoKey`` when its key reference is not set)."""
        kwargs: dict[str, Any] = {
            "model": deployment.model,
            "max_tokens": min(request.max_tokens, deployment.max_tokens or request.max_tokens),
            "temperature": request.temperature,
            "timeout": deployment.timeout_s or timeout_s,
            "num_retries": 0,  # the chain is the retry: a failing deployment is not asked twice
            "max_retries": 0,
        }
        if deployment.local:
            kwargs["metadata"] = {"factory_request": request}
        if deployment.api_base:
            kwargs["api_base"] = deployment.api_base
        if deployment.key is not None:
            key = await self._keys.resolve(deployment.key)
            if not key:
                raise NoKey(f"its key {deployment.key.describe()} is not set")
            register_secret(key)
            kwargs["api_key"] = key
        elif deployment.api_base and not deployment.ollama:
            # A server of our own with no key named (llama.cpp, LM Studio, vLLM, a gateway): without
            # this LiteLLM would send the provider's key from the environment (OPENAI_API_KEY, ...)
            # to that server, or refuse to call it.
            kwargs["api_key"] = "no-key-configured"
        return kwargs

    async def call(self, litellm: Any, deployment: Deployment, request: ChatRequest, timeout_s: float) -> ChatResponse:
        messages = [m.model_dump() for m in request.messages]
        kwargs = await self.params(deployment, request, timeout_s)
        mode = self.mode(deployment) if request.json_schema is not None else None
        try:
            response = await litellm.acompletion(messages=self._ask(messages, request, mode, kwargs), **kwargs)
        except Exception as exc:
            # A provider that refuses JSON-schema output is asked again, once, in JSON mode with the
            # schema in the prompt (when the mode was not chosen explicitly).
            if mode != "json_schema" or deployment.structured != "auto" or not refused_schema(exc):
                raise
            mode = "json_object"
            if len(self._no_schema) < _KEPT:
                self._no_schema.add(deployment.id)
            response = await litellm.acompletion(messages=self._ask(messages, request, mode, kwargs), **kwargs)
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        text = response.choices[0].message.content
        if not isinstance(text, str):
            raise ValueError("the provider answered no text")
        return ChatResponse(
            text=text,
            alias=request.alias,
            model=deployment.model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=self._cost(litellm, deployment, response, tokens_in, tokens_out),
        )

    @staticmethod
    def _ask(
        messages: list[dict[str, str]], request: ChatRequest, mode: str | None, kwargs: dict[str, Any]
    ) -> list[dict[str, str]]:
        """The messages to send, with ``kwargs``' response format set for ``mode``."""
        kwargs.pop("response_format", None)
        if request.json_schema is None or mode is None:
            return messages
        if mode == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
            return with_schema_prompt(messages, request.json_schema)
        # json_schema, and the grammar (the in-process provider reads the schema from it)
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "task_result", "schema": request.json_schema, "strict": False},
        }
        return messages

    @staticmethod
    def _configured_cost(deployment: Deployment, tokens_in: int, tokens_out: int) -> float | None:
        """USD by the deployment's own prices, 0 for a local model, None when LiteLLM's map must say."""
        if deployment.local:
            return 0.0
        if deployment.price_in_per_m is not None or deployment.price_out_per_m is not None:
            return (
                tokens_in * (deployment.price_in_per_m or 0.0) + tokens_out * (deployment.price_out_per_m or 0.0)
            ) / 1e6
        return None

    @classmethod
    def priced(cls, litellm: Any, deployment: Deployment, tokens_in: int, tokens_out: int) -> float:
        """USD of a streamed call's tokens, by the same rules as ``_cost`` (never None)."""
        configured = cls._configured_cost(deployment, tokens_in, tokens_out)
        if configured is not None:
            return configured
        if deployment.model in _UNPRICED:
            return 0.0
        try:
            cost_in, cost_out = litellm.cost_per_token(
                model=deployment.model, prompt_tokens=tokens_in, completion_tokens=tokens_out
            )
        except Exception as exc:  # a model LiteLLM's map lacks: unpriced, shown as 0
            if "map" in str(exc).lower() and len(_UNPRICED) < _KEPT:
                _UNPRICED.add(deployment.model)
            return 0.0
        return float(cost_in or 0.0) + float(cost_out or 0.0)

    @classmethod
    def _cost(cls, litellm: Any, deployment: Deployment, response: Any, tokens_in: int, tokens_out: int) -> float:
        """USD of one call: configured prices first, LiteLLM's price map for known cloud models, 0
        for local ones and for models nobody priced (never None)."""
        configured = cls._configured_cost(deployment, tokens_in, tokens_out)
        if configured is not None:
            return configured
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        if cost is None and deployment.model not in _UNPRICED:
            try:
                cost = litellm.completion_cost(completion_response=response, model=deployment.model)
            except Exception as exc:  # a model LiteLLM's map lacks: unpriced, shown as 0
                if "map" in str(exc).lower() and len(_UNPRICED) < _KEPT:
                    _UNPRICED.add(deployment.model)  # its "isn't mapped" is not asked again (~0.7 ms each)
                cost = 0.0
        return float(cost or 0.0)

    async def embed(self, texts: list[str], *, timeout_s: float) -> list[list[float]]:
        """Vectors for ``texts`` through the ``local/embed`` alias (its one deployment)."""
        if not texts:
            return []
        litellm = await self.ready()
        try:
            response = await litellm.aembedding(model=embedding_route().model, input=texts, timeout=timeout_s)
        except Exception as exc:  # LiteLLM raises many types; all mean "no vectors"
            raise RoutingError(f"{EMBED_ALIAS} failed: {redact(storable(str(exc)))}. Check `factory doctor`.") from exc
        return [list(item["embedding"]) for item in response.data]


__all__ = ["EMBEDDED", "KeyResolver", "LiteLLMRouter", "Message", "classify", "with_schema_prompt"]
