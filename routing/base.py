"""Contracts of the ``routing`` package: chat requests, the model Protocols and the usage ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, Field

from observability.text import storable

Alias = Literal["factory/architect", "factory/coder", "factory/fast", "factory/cheap"]
CHAT_ALIASES: tuple[Alias, ...] = ("factory/architect", "factory/coder", "factory/fast", "factory/cheap")
EMBED_ALIAS = "local/embed"


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """One model call, tagged with who made it for the ledger."""

    alias: Alias
    messages: list[Message]
    json_schema: dict[str, Any] | None = None
    max_tokens: int = Field(default=1024, ge=1, le=32768)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    run_id: str | None = None
    team: str | None = None
    purpose: str = "objective"


FallbackKind = Literal[
    "timeout",
    "rate_limit",
    "server_error",
    "connection",
    "auth",
    "bad_request",
    "bad_output",
    "no_key",
    "cooling",
    "other",
]


class Fallback(BaseModel):
    """A deployment of the chain that did not answer a call, and why; the call moved to the next."""

    deployment: str  # model@api_base: no secret in it
    kind: FallbackKind
    reason: Annotated[str, AfterValidator(storable)] = ""  # the provider's text, secrets redacted


class ChatResponse(BaseModel):
    """What a model answered and what it cost."""

    text: str
    alias: str
    # The concrete deployment that answered, as the provider names it; stored with the stage and the
    # ledger, so what PostgreSQL cannot store is replaced (``text`` is left as it is: it is validated).
    model: Annotated[str, AfterValidator(storable)]
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    #: The deployments tried before the one that answered (empty when the first answered).
    fallbacks: list[Fallback] = Field(default_factory=list)


class UsageRecord(BaseModel):
    """One row of the usage ledger."""

    run_id: str | None
    team: str | None
    alias: str
    model: str
    purpose: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    ok: bool
    error: str | None = None
    created_at: datetime
    fallbacks: list[Fallback] = Field(default_factory=list)


class ChatModel(Protocol):
    """Anything that answers chat requests: the LiteLLM router, or a scripted model in tests."""

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse: ...


class StreamingChatModel(Protocol):
    """Anything that streams a free-text answer (no ``json_schema``: a request with one is refused
    with ``ValueError``). A failure before the first chunk may move the call to another deployment;
    a failure after it raises ``RoutingError`` (the caller keeps what it showed)."""

    def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        """Text chunks as they arrive, then exactly one ChatResponse (the whole text, model, tokens,
        cost, latency, fallbacks) as the last item."""
        ...


class RoutedChatModel(ChatModel, StreamingChatModel, Protocol):
    """A model that answers whole and streamed: the factory's model chain (``Factory.model``)."""


class Embedder(Protocol):
    """Anything that turns texts into vectors (alias ``local/embed``)."""

    async def embed(self, texts: list[str], *, timeout_s: float) -> list[list[float]]: ...


class Spend(BaseModel):
    """What a run (or one team in it) has used so far."""

    tokens: int = 0  # in and out
    cost_usd: float = 0.0


class UsageLedger(Protocol):
    """Where every model call is recorded."""

    async def record(self, usage: UsageRecord) -> None: ...

    async def spent(self, run_id: str, team: str | None = None) -> Spend:
        """Totals of the run's calls (of one team's, if given)."""
        ...
