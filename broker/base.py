"""Contracts of the ``broker`` package: clarifications between teams, within hard limits (DESIGN §6).

A team that needs another team's answer sends a ``ClarificationRequest``; a responder of the
target team answers it by running that team on a focused objective. The broker enforces every
limit itself (callers cannot skip them): no self-routing, no cycles, a hop depth, a cap per
objective and a reply timeout. What it refuses or what times out comes back as a refusal, which
the pipeline turns into an escalation; nothing waits forever.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from teams.slugs import TeamSlug


class Refusal(StrEnum):
    """Why a clarification was not answered."""

    SELF_ROUTING = "self_routing"
    CYCLE = "cycle"
    DEPTH = "depth"
    CAP = "cap"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class BrokerLimits:
    """All configurable (``FACTORY_CLARIFY_*``); enforced by the broker."""

    max_per_objective: int = 3
    max_depth: int = 2  # hops: a responder may itself ask once more
    reply_timeout_s: float = 120.0
    reply_ttl_s: int = 600
    claim_idle_s: float = 30.0  # a request unacknowledged this long is reclaimed by a live responder
    stream_maxlen: int = 10_000  # about: a team's backlog of unanswered requests (answered ones are deleted)
    reconnect_attempts: int = 8


class ClarificationRequest(BaseModel):
    """A question from one team to another, with the chain of teams that asked before it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    run_id: str
    objective_id: str
    from_team: TeamSlug
    target_team: TeamSlug
    question: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
    #: Teams that asked so far, in order, ending with ``from_team``: [A] for A→B, [A, B] for B→C.
    hop_chain: list[TeamSlug]
    #: What the asker is working on, so the answer fits it (bounded).
    context: str = Field(default="", max_length=8000)
    created_at: datetime

    @property
    def depth(self) -> int:
        return len(self.hop_chain)

    def route(self) -> str:
        return " → ".join([*self.hop_chain, self.target_team])


class ClarificationReply(BaseModel):
    """The target team's answer (``ok``) or why it could not give one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    team: TeamSlug
    ok: bool
    answer: str = Field(max_length=20_000)
    responder: str = ""
    answered_at: datetime


class BrokerOutcome(BaseModel):
    """What came of a request: a reply, or a refusal with its reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request: ClarificationRequest
    reply: ClarificationReply | None = None
    refusal: Refusal | None = None
    detail: str = ""

    @property
    def answered(self) -> bool:
        return self.reply is not None and self.reply.ok and self.refusal is None

    @property
    def status(self) -> str:
        """``answered``, the refusal reason, or ``unanswered`` (the target team could not answer)."""
        if self.answered:
            return "answered"
        return self.refusal.value if self.refusal else "unanswered"


class Answerer(Protocol):
    """Runs the target team on a focused objective and words its answer."""

    async def __call__(self, request: ClarificationRequest) -> ClarificationReply: ...


class ClarificationBroker(Protocol):
    """Routes requests to responders and waits, within the limits, for the reply."""

    limits: BrokerLimits

    async def request(self, request: ClarificationRequest, limits: BrokerLimits | None = None) -> BrokerOutcome:
        """Send and wait for the reply; a refusal or timeout is an outcome, never an exception.
        ``limits``: this request's (a run's policy), else the broker's."""
        ...

    async def serve(self, team: TeamSlug, answerer: Answerer, *, consumer: str, stop: asyncio.Event) -> None:
        """Answer ``team``'s requests until ``stop`` is set (a responder; any number may run)."""
        ...

    async def counters(self) -> dict[str, int]:
        """requests, replies, refusals by reason (``refused.<reason>``), timeouts, reclaims, duplicates."""
        ...


def refusal_for(request: ClarificationRequest, limits: BrokerLimits) -> tuple[Refusal, str] | None:
    """The routing limits every broker checks before sending (the cap needs shared state, so it is not here)."""
    if request.target_team == request.from_team:
        return Refusal.SELF_ROUTING, f"{request.from_team} cannot ask itself"
    if request.target_team in request.hop_chain:
        return Refusal.CYCLE, f"{request.route()} would loop back to {request.target_team}"
    if request.depth > limits.max_depth:
        return Refusal.DEPTH, f"{request.route()} is {request.depth} hops, over the limit of {limits.max_depth}"
    if not request.hop_chain or request.hop_chain[-1] != request.from_team:
        return Refusal.CYCLE, "the hop chain must end with the asking team"
    return None


def cap_refusal(request: ClarificationRequest, count: int, limits: BrokerLimits) -> tuple[Refusal, str] | None:
    """``count`` is this request's number within its objective (1 for the first)."""
    if count > limits.max_per_objective:
        return Refusal.CAP, (
            f"objective {request.objective_id} already asked {limits.max_per_objective} clarifications (the cap)"
        )
    return None
