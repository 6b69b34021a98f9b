"""Streaming a free-text answer through an alias's chain, chunk by chunk, as ``StreamingChatModel``.

The chain is walked as ``LiteLLMRouter.complete`` walks it (run-pinned routing, cooldowns, keys,
costs, every skipped deployment kept as a ``Fallback``), with one difference that streaming forces:
a deployment that fails before its first text chunk (no first token within the timeout, a 429, a
5xx, a refused connection, a missing key, a stream with no text) is skipped for the next one, but
one that fails after it raises ``StreamInterrupted`` — the caller has shown the chunks already, and
an answer from another model appended to them would be a different answer (LiteLLM's own Router
does not fall back mid-stream either). Every wait for a chunk is bounded: the deployment's timeout
for the first, an idle timeout between the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from factory.errors import RoutingError
from routing.base import ChatModel, ChatRequest, ChatResponse, Fallback, StreamingChatModel
from routing.config import Deployment

if TYPE_CHECKING:
    from routing.router import LiteLLMRouter

log = logging.getLogger(__name__)
T = TypeVar("T")


class StreamInterrupted(RoutingError):
    """A streamed answer broke off after its first chunk: no other deployment was asked (the caller
    keeps what it showed). ``response`` is the part that arrived, with the tokens and cost it took."""

    def __init__(self, message: str, *, response: ChatResponse, fallbacks: list[Fallback]) -> None:
        super().__init__(message, fallbacks=fallbacks)
        self.response = response


def check_streamable(request: ChatRequest) -> None:
    """Streaming is for free text: a request for structured output is refused before any call."""
    if request.json_schema is not None:
        raise ValueError(
            "streaming is for free text: this request carries a json_schema; call complete() for structured output"
        )


def streaming(model: ChatModel) -> StreamingChatModel:
    """``model`` as a ``StreamingChatModel``; a model that cannot stream is refused, saying so."""
    if not callable(getattr(model, "stream", None)):
        raise TypeError(
            f"{type(model).__name__} cannot stream: give it a stream() method (routing.base.StreamingChatModel)"
        )
    return cast(StreamingChatModel, model)


@asynccontextmanager
async def closing(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``items``, closed when the block ends however it ends (the caller stopped reading, an error, a
    timeout): an abandoned stream releases its connection or its model thread at once."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def litellm_stream(
    litellm: Any, router: LiteLLMRouter, deployment: Deployment, request: ChatRequest, timeout_s: float
) -> AsyncIterator[str | ChatResponse]:
    """One LiteLLM deployment's streamed answer: its text chunks, then the ``ChatResponse`` with the
    provider's usage (counted with LiteLLM's tokenizer when the provider sent none) and the cost."""
    kwargs = await router.params(deployment, request, timeout_s)  # a missing key fails here, before any chunk
    messages = [m.model_dump() for m in request.messages]
    response = await litellm.acompletion(
        messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    parts: list[str] = []
    usage: Any = None
    async with closing(cast(AsyncIterator[Any], response)):
        async for chunk in response:
            usage = getattr(chunk, "usage", None) or usage
            choices = getattr(chunk, "choices", None) or []
            text = getattr(getattr(choices[0], "delta", None), "content", None) if choices else None
            if isinstance(text, str) and text:
                parts.append(text)
                yield text
    text = "".join(parts)
    tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
    tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
    if usage is None:
        tokens_in, tokens_out = counted(litellm, deployment, messages, text)
    yield _answer(litellm, router, deployment, request, text, tokens_in, tokens_out)


def counted(litellm: Any, deployment: Deployment, messages: list[dict[str, str]], text: str) -> tuple[int, int]:
    """Tokens in and out by LiteLLM's tokenizer for the model (its default one for a model it lacks)."""
    try:
        tokens_in = int(litellm.token_counter(model=deployment.model, messages=messages))
        tokens_out = int(litellm.token_counter(model=deployment.model, text=text, count_response_tokens=True))
    except Exception as exc:  # counting must not fail an answer that arrived: estimated instead
        log.info("cannot count tokens for %s (%s); estimating 4 characters a token", deployment.id, exc)
        return sum(len(m["content"]) for m in messages) // 4, len(text) // 4
    return tokens_in, tokens_out


def cause(exc: BaseException) -> BaseException:
    """The provider's error inside LiteLLM's ``MidStreamFallbackError`` (its wrapper of an error met
    mid-stream, which names none of it), else ``exc`` itself."""
    inner = getattr(exc, "original_exception", None)
    return inner if type(exc).__name__ == "MidStreamFallbackError" and isinstance(inner, BaseException) else exc


async def stream_chain(
    router: LiteLLMRouter, request: ChatRequest, *, timeout_s: float, idle_s: float
) -> AsyncIterator[str | ChatResponse]:
    """The walker behind ``LiteLLMRouter.stream`` (see the module docstring)."""
    check_streamable(request)
    litellm = await router.ready()
    routing = await router.routing_for(request)
    hops: list[Fallback] = []
    started = time.perf_counter()
    for deployment, skipped in router.plan(routing.chain(request.alias)):
        if skipped is not None:
            hops.append(skipped)
            continue
        first_s = deployment.timeout_s or timeout_s
        shown: list[str] = []
        final: ChatResponse | None = None
        try:
            async with closing(router.deployment_stream(litellm, deployment, request, first_s)) as source:
                while final is None:
                    item = await _next(source, first_s if not shown else min(idle_s, first_s), len(shown))
                    if item is None:
                        raise ValueError("the stream ended without a final answer")
                    if isinstance(item, ChatResponse):
                        final = item
                    elif item:
                        shown.append(item)
                        yield item
            if final is None or not final.text:
                raise ValueError("the stream ended without any text")
        except Exception as exc:
            hop = router.failed(routing, deployment, request, exc)
            if not shown:
                hops.append(hop)
                continue
            raise _interrupted(litellm, router, deployment, request, "".join(shown), hop, hops, started) from exc
        if not deployment.local:
            router.cooldowns.succeeded(deployment.id)
        yield final.model_copy(
            update={
                "alias": request.alias,
                "model": deployment.model,
                "cost_usd": 0.0 if deployment.local else final.cost_usd,
                "fallbacks": hops,
                "latency_ms": (time.perf_counter() - started) * 1000,
            }
        )
        return
    raise router.none_answered(request, hops)


async def _next(source: AsyncIterator[str | ChatResponse], wait_s: float, chunks: int) -> str | ChatResponse | None:
    """The next item of ``source`` within ``wait_s`` (None when it ended)."""
    try:
        async with asyncio.timeout(wait_s):
            return await anext(source)
    except StopAsyncIteration:
        return None
    except TimeoutError as exc:
        what = "no first token" if not chunks else f"no chunk after {chunks} chunks"
        raise TimeoutError(f"{what} within {wait_s:g}s") from exc


def _answer(
    litellm: Any,
    router: LiteLLMRouter,
    deployment: Deployment,
    request: ChatRequest,
    text: str,
    tokens_in: int,
    tokens_out: int,
) -> ChatResponse:
    """What a deployment streamed, priced."""
    return ChatResponse(
        text=text,
        alias=request.alias,
        model=deployment.model,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost_usd=router.priced(litellm, deployment, tokens_in, tokens_out),
    )


def _interrupted(
    litellm: Any,
    router: LiteLLMRouter,
    deployment: Deployment,
    request: ChatRequest,
    text: str,
    hop: Fallback,
    hops: list[Fallback],
    started: float,
) -> StreamInterrupted:
    """The error of a stream that broke off after its first chunk, carrying what the part cost."""
    tokens_in, tokens_out = counted(litellm, deployment, [m.model_dump() for m in request.messages], text)
    partial = _answer(litellm, router, deployment, request, text, tokens_in, tokens_out).model_copy(
        update={"latency_ms": (time.perf_counter() - started) * 1000, "fallbacks": hops}
    )
    return StreamInterrupted(
        f"the answer of {request.alias} from {deployment.id} broke off mid-way ({hop.kind}: {hop.reason[:200]})"
        f" after {len(text)} characters; what was shown is all there is (no other model is asked mid-answer)."
        " Ask again to retry.",
        response=partial,
        fallbacks=[*hops, hop],
    )
