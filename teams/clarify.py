"""Answering a clarification: run the target team on a focused objective (DESIGN §6).

The target team sees the requirement, the run's earlier artifacts it reads, what the asker is
working on and the question. If it needs yet another team first, it may ask once more through
the broker (the broker bounds the depth and refuses cycles); its answer is then re-derived with
that reply. A team that cannot answer says why, and the asker escalates with the whole chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from broker.base import ClarificationBroker, ClarificationReply, ClarificationRequest
from teams.base import Objective, RunStore, StageStatus
from teams.results import TaskResult, TaskStatus
from teams.roster import team
from teams.runner import PriorArtifact, TeamRunner
from teams.tools import ArtifactRecall

ANSWER_CHARS = 4000
CRITERIA = (
    "The answer addresses the question directly and specifically.",
    "The assumptions the answer rests on are stated.",
)


def answer_text(result: TaskResult) -> str:
    """A result worded as an answer for the asking team, bounded."""
    parts = [result.reasoning.strip()]
    if result.verified_facts:
        parts.append("Facts: " + "; ".join(result.verified_facts))
    if result.assumptions_made:
        parts.append("Assumptions: " + "; ".join(result.assumptions_made))
    parts += [f"[{a.name}]\n{a.content[:800]}" for a in result.artifacts]
    return "\n".join(p for p in parts if p)[:ANSWER_CHARS]


@dataclass
class TeamAnswerer:
    """``broker.base.Answerer`` that runs the target team through the same runner as the pipeline."""

    runner: TeamRunner
    store: RunStore
    broker: ClarificationBroker

    async def __call__(self, request: ClarificationRequest) -> ClarificationReply:
        member = team(request.target_team)
        run = await self.store.get_run(request.run_id)
        requirement = run.requirement if run else "(the requirement is not available to this responder)"
        prior = [
            PriorArtifact(s.team, a)
            for s in await self.store.stages(request.run_id)
            if s.status is StageStatus.COMPLETE and s.result is not None
            for a in s.result.artifacts
        ]
        objective = Objective(
            id=f"clarify:{request.id}",
            run_id=request.run_id,
            team=member.slug,
            goal=f"Answer the {request.from_team} team's question: {request.question}",
            acceptance_criteria=list(CRITERIA),
            hop_depth=request.depth,
        )
        notes = [f"The {request.from_team} team is working on: {request.context}"] if request.context else []
        context = [p for p in prior if p.team in member.reads]
        recall = ArtifactRecall([(p.team, p.artifact) for p in prior])
        result = (await self.runner.execute(member, objective, requirement, context, notes, recall)).result
        asked = result.clarification_needed
        if result.status is TaskStatus.NEEDS_CLARIFICATION and asked is not None:
            nested = await self.broker.request(
                ClarificationRequest(
                    id=f"{request.id}/{member.slug}",
                    run_id=request.run_id,
                    objective_id=objective.id,
                    from_team=member.slug,
                    target_team=asked.target_team,
                    question=asked.question,
                    hop_chain=[*request.hop_chain, member.slug],
                    context=objective.goal[:8000],
                    created_at=datetime.now(UTC),
                )
            )
            if not nested.answered or nested.reply is None:
                reason = nested.refusal.value if nested.refusal else "no answer"
                return self._reply(
                    request,
                    ok=False,
                    answer=f"{member.slug} needed {asked.target_team} to answer first ({nested.request.route()}),"
                    f" which failed: {reason}: {nested.detail}",
                )
            notes.append(f"Answer from {asked.target_team}: {nested.reply.answer}")
            result = (await self.runner.execute(member, objective, requirement, context, notes, recall)).result
        if result.status is TaskStatus.COMPLETE:
            return self._reply(request, ok=True, answer=answer_text(result))
        why = "; ".join(result.blockers) or "it asked a further question instead of answering"
        return self._reply(request, ok=False, answer=f"{member.slug} could not answer: {why}")

    @staticmethod
    def _reply(request: ClarificationRequest, *, ok: bool, answer: str) -> ClarificationReply:
        return ClarificationReply(
            request_id=request.id,
            team=request.target_team,
            ok=ok,
            answer=answer[:ANSWER_CHARS],
            answered_at=datetime.now(UTC),
        )
