"""Memory at a stage's edges: the packed context it starts from, its ``recall`` tool, what it retains.

The pipeline uses this when memory is wired (``PipelineDeps.memory``); without it, a stage reads
the earlier artifacts it names and ``recall`` searches the run's own artifacts (``ArtifactRecall``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from memory.base import MemoryKind
from memory.gateway import MemoryGateway, TokenCount, mental_model_item
from memory.packing import PackedContext, compact, pack
from memory.retention import Extractor, StageOutcome, stage_memories
from teams.base import Run
from teams.results import TaskResult
from teams.roster import Team
from teams.tools import RecallHit

log = logging.getLogger(__name__)


def stage_query(member: Team, requirement: str) -> str:
    """What a stage looks for in memory: its goal, its deliverables and the requirement's start."""
    deliverables = "; ".join(f"{d.name}: {d.description}" for d in member.produces)
    return f"{member.goal}\n{deliverables}\n{requirement[:1000]}"


@dataclass(frozen=True)
class MemoryRecall:
    """``teams.tools.Recall`` on the memory gateway: this team's bank and the shared world, this run."""

    gateway: MemoryGateway
    team: str
    run_id: str
    count: TokenCount
    has_items: bool
    budget_tokens: int = 800

    def available(self) -> bool:
        return self.has_items

    async def recall(self, query: str, *, limit: int) -> list[RecallHit]:
        found = await self.gateway.recall(
            self.team, query, budget_tokens=self.budget_tokens, count=self.count, limit=limit, run_id=self.run_id
        )
        return [
            RecallHit(
                f"{r.item.metadata.get('team', r.item.bank)}/{r.item.metadata.get('artifact', r.item.kind.value)}",
                r.item.text,
                r.similarity,
            )
            for r in found
        ]


@dataclass(frozen=True)
class StageMemory:
    """Packing, recall and retention for the pipeline, with one token counter and one budget."""

    gateway: MemoryGateway
    extractor: Extractor
    count: TokenCount
    budget_tokens: int  # for the packed memory part of a stage's prompt
    window_tokens: int  # the model's context window, for the compaction threshold

    async def context(self, member: Team, run: Run) -> PackedContext:
        return await pack(
            self.gateway,
            member.slug,
            stage_query(member, run.requirement),
            budget_tokens=self.budget_tokens,
            count=self.count,
            run_id=run.id,
        )

    def recall(self, member: Team, run: Run, *, has_items: bool) -> MemoryRecall:
        return MemoryRecall(self.gateway, member.slug, run.id, self.count, has_items)

    async def compact(self, member: Team, run_id: str, batch: list[str]) -> str:
        return await compact(self.gateway, member.slug, run_id, batch)

    async def unretained(self, run: Run, teams: Sequence[str]) -> list[str]:
        """Which of ``teams`` (stages complete in ``run``) have no memory from it yet: a process that
        died between a stage's commit and its retention, or stages a revision reused."""
        if not teams:
            return []
        done = await self.gateway.store.banks_with(run.id, MemoryKind.MENTAL_MODEL)
        return [t for t in teams if t not in done]

    async def retain(self, member: Team, run: Run, result: TaskResult, packed: PackedContext | None = None) -> int:
        """Facts, decisions, artifact chunks and a refreshed mental model; the number of items kept.

        ``packed``: the context the stage started from, whose mental model is the one to refresh."""
        outcome = StageOutcome(
            team=member.slug,
            run_id=run.id,
            goal=member.goal,
            reasoning=result.reasoning,
            verified_facts=result.verified_facts,
            assumptions=result.assumptions_made,
            artifacts=[(a.name, a.content) for a in result.artifacts],
        )
        previous = packed.mental_model if packed is not None else await self.gateway.mental_model(member.slug)
        extraction = await self.extractor.extract(outcome, previous)
        items = stage_memories(outcome, extraction)
        refreshed = [mental_model_item(member.slug, extraction.mental_model, run_id=run.id)]
        # One embedding batch and one transaction for what the stage learned and the refreshed model.
        await self.gateway.retain([*items, *(refreshed if extraction.mental_model else [])])
        return len(items)
