"""In-process twin of the broker for unit tests: the same contract, asyncio queues instead of streams.

A responder task cancelled mid-request puts the request back (what ``XAUTOCLAIM`` does for a
killed responder on Redis); answers are accepted once per request id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict

from broker.base import (
    Answerer,
    BrokerLimits,
    BrokerOutcome,
    ClarificationReply,
    ClarificationRequest,
    Refusal,
    cap_refusal,
    refusal_for,
)
from teams.slugs import TeamSlug


class InMemoryBroker:
    """``ClarificationBroker`` within one event loop."""

    def __init__(self, limits: BrokerLimits | None = None) -> None:
        self.limits = limits or BrokerLimits()
        self._queues: defaultdict[str, asyncio.Queue[ClarificationRequest]] = defaultdict(asyncio.Queue)
        self._per_objective: Counter[str] = Counter()
        self._answers: dict[str, ClarificationReply] = {}
        self._waiters: dict[str, asyncio.Future[ClarificationReply]] = {}
        self._counters: Counter[str] = Counter()

    async def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def deliver(self, request: ClarificationRequest) -> None:
        """Put a request on its team's queue again (a duplicate delivery, as Redis may make)."""
        self._queues[request.target_team].put_nowait(request)

    async def request(self, request: ClarificationRequest, limits: BrokerLimits | None = None) -> BrokerOutcome:
        limits = limits or self.limits
        if request.id in self._answers:  # asked and answered before: the same answer again
            return BrokerOutcome(request=request, reply=self._answers[request.id])
        refused = refusal_for(request, limits)
        waiter = self._waiters.get(request.id)
        if refused is None and waiter is None:  # a request already out is counted once, and waited on again
            self._per_objective[request.objective_id] += 1
            refused = cap_refusal(request, self._per_objective[request.objective_id], limits)
        if refused is not None:
            self._counters[f"refused.{refused[0].value}"] += 1
            return BrokerOutcome(request=request, refusal=refused[0], detail=refused[1])
        if waiter is None:
            self._counters["requests"] += 1
            waiter = self._waiters[request.id] = asyncio.get_running_loop().create_future()
            self.deliver(request)
        try:
            reply = await asyncio.wait_for(asyncio.shield(waiter), timeout=limits.reply_timeout_s)
        except TimeoutError:
            self._counters["timeouts"] += 1
            return BrokerOutcome(
                request=request,
                refusal=Refusal.TIMEOUT,
                detail=f"{request.target_team} did not answer within {limits.reply_timeout_s:g} s",
            )
        return BrokerOutcome(request=request, reply=reply, detail="" if reply.ok else reply.answer)

    async def serve(self, team: TeamSlug, answerer: Answerer, *, consumer: str, stop: asyncio.Event) -> None:
        queue = self._queues[team]
        while not stop.is_set():
            try:
                request = await asyncio.wait_for(queue.get(), timeout=0.05)
            except TimeoutError:
                continue
            if request.id in self._answers:
                self._counters["duplicates"] += 1
                continue
            try:
                reply = await answerer(request)
            except asyncio.CancelledError:
                self._counters["reclaims"] += 1
                queue.put_nowait(request)  # a killed responder's request goes to the next one
                raise
            except Exception as exc:
                reply = ClarificationReply(
                    request_id=request.id,
                    team=team,
                    ok=False,
                    answer=f"the responder failed: {exc}",
                    answered_at=request.created_at,
                )
            if request.id in self._answers:
                self._counters["duplicates"] += 1
                continue
            reply = reply.model_copy(update={"responder": consumer})
            self._answers[request.id] = reply
            self._counters["replies"] += 1
            waiter = self._waiters.pop(request.id, None)
            if waiter is not None and not waiter.done():
                with contextlib.suppress(asyncio.InvalidStateError):
                    waiter.set_result(reply)
