"""Budgets per run and per team (DESIGN §8): a model call that would go over one is not made.

Spending is read from the usage ledger, so every process that works on a run sees the same
totals. When a budget is spent the call raises ``BudgetExceeded``; the pipeline turns that into
an escalation of kind ``budget`` instead of silently stopping. Each budget extension the
operator grants (an approved budget escalation) adds one more budget of the same size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from factory.errors import BudgetExceeded
from routing.base import ChatModel, ChatRequest, ChatResponse, Spend, UsageLedger
from routing.streaming import check_streamable, closing, streaming

#: How many budget extensions the operator granted a run.
Grants = Callable[[str], Awaitable[int]]


@dataclass(frozen=True)
class BudgetLimits:
    """Limits per run and per team within a run; None is unlimited."""

    run_tokens: int | None = None
    run_cost_usd: float | None = None
    team_tokens: int | None = None
    team_cost_usd: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.run_tokens, self.run_cost_usd, self.team_tokens, self.team_cost_usd))


class BudgetedModel:
    """Wraps a ``ChatModel``: before each call of a run, checks the run's and the team's spending."""

    def __init__(
        self,
        inner: ChatModel,
        ledger: UsageLedger,
        limits: BudgetLimits | Callable[[str], Awaitable[BudgetLimits]],
        grants: Grants,
    ) -> None:
        """``limits``: the same for every run, or what a run's recorded policy sets (by run id)."""
        self._inner = inner
        self._ledger = ledger
        self._limits = limits
        self._grants = grants

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        if request.run_id:
            await self.check(request.run_id, request.team)
        return await self._inner.complete(request, timeout_s=timeout_s)

    async def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        """``StreamingChatModel``: the budget checked before the stream starts (for a run's call)."""
        check_streamable(request)
        if request.run_id:
            await self.check(request.run_id, request.team)
        async with closing(streaming(self._inner).stream(request, timeout_s=timeout_s)) as items:
            async for item in items:
                yield item

    async def check(self, run_id: str, team: str | None) -> None:
        """Raise ``BudgetExceeded`` if the run (or ``team`` in it) has spent its budget."""
        limits = self._limits if isinstance(self._limits, BudgetLimits) else await self._limits(run_id)
        if not limits.any:
            return
        run: Spend = await self._ledger.spent(run_id)
        times = 1 + await self._grants(run_id)
        if limits.run_tokens is not None and run.tokens >= limits.run_tokens * times:
            raise BudgetExceeded(
                f"run {run_id} has used {run.tokens} tokens of its {limits.run_tokens * times}-token budget"
            )
        if limits.run_cost_usd is not None and run.cost_usd >= limits.run_cost_usd * times:
            raise BudgetExceeded(
                f"run {run_id} has spent ${run.cost_usd:.4f} of its ${limits.run_cost_usd * times:.4f} budget"
            )
        if (limits.team_tokens is not None or limits.team_cost_usd is not None) and team:
            spent = await self._ledger.spent(run_id, team)
            if limits.team_tokens is not None and spent.tokens >= limits.team_tokens * times:
                raise BudgetExceeded(
                    f"team {team} has used {spent.tokens} tokens of its {limits.team_tokens * times}-token"
                    f" budget in run {run_id}"
                )
            if limits.team_cost_usd is not None and spent.cost_usd >= limits.team_cost_usd * times:
                raise BudgetExceeded(
                    f"team {team} has spent ${spent.cost_usd:.4f} of its ${limits.team_cost_usd * times:.4f}"
                    f" budget in run {run_id}"
                )
