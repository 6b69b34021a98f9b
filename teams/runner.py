"""Executing one objective: build the prompt, call the team's model, validate, repair once."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from routing.base import ChatModel, ChatRequest, ChatResponse, Message
from teams.base import Objective
from teams.parsing import OutputProblem, parse_task_result
from teams.results import Artifact, TaskResult, blocked
from teams.roster import Team
from teams.schema import SchemaBounds, response_schema

_BAD_OUTPUT_ECHO_CHARS = 2000


@dataclass(frozen=True)
class PriorArtifact:
    """An artifact of an earlier stage that this stage reads."""

    team: str
    artifact: Artifact


@dataclass
class Execution:
    """The outcome of one execution of an objective."""

    result: TaskResult
    responses: list[ChatResponse] = field(default_factory=list)
    system_blocked: bool = False
    problem: str | None = None
    model_s: float = 0.0


def _system_prompt(team: Team) -> str:
    return (
        f"You are the {team.name} team of an AI software factory.\n\n{team.soul}\n{team.agents}\n"
        "Answer with one JSON object and nothing else. Fields: status (COMPLETE when the"
        " deliverables are written, NEEDS_CLARIFICATION with clarification_needed when another"
        " team must answer a question first, BLOCKED with blockers when you cannot proceed),"
        " reasoning, blockers, assumptions_made, verified_facts, clarification_needed (or null),"
        " artifacts (each with name, kind and its full content) and confidence: how sure you are,"
        " from 0.0 to 1.0, that the artifacts meet the acceptance criteria (e.g. 0.85)."
    )


def _context_block(prior: Sequence[PriorArtifact], budget_chars: int) -> str:
    """Earlier artifacts, each cut to a fair share of the budget so none crowds out the rest."""
    if not prior:
        return ""
    share = max(200, budget_chars // len(prior))
    parts = []
    for item in prior:
        content = item.artifact.content
        if len(content) > share:
            content = content[:share] + "\n[... cut to fit the context budget]"
        parts.append(f"--- {item.artifact.name} (from {item.team}) ---\n{content}")
    return "Artifacts of earlier teams:\n" + "\n".join(parts) + "\n\n"


def build_messages(
    team: Team,
    objective: Objective,
    requirement: str,
    prior: Sequence[PriorArtifact],
    *,
    feedback: Sequence[str],
    budget_chars: int,
) -> list[Message]:
    """The prompt: identity, the requirement (always whole), earlier artifacts, the objective."""
    deliverables = "\n".join(f"- {d.name} ({d.kind}): {d.description}" for d in team.produces)
    criteria = "\n".join(f"- {c}" for c in objective.acceptance_criteria)
    notes = "".join(f"Note: {f}\n" for f in feedback)
    user = (
        f"Requirement:\n{requirement}\n\n"
        f"{_context_block(prior, budget_chars)}"
        f"Objective (attempt {objective.attempt}): {objective.goal}\n\n"
        f"Acceptance criteria:\n{criteria}\n\nDeliverables:\n{deliverables}\n\n{notes}"
    )
    return [Message(role="system", content=_system_prompt(team)), Message(role="user", content=user)]


class TeamRunner:
    """Runs objectives against a chat model; malformed output gets one repair, then BLOCKED."""

    def __init__(
        self, model: ChatModel, *, timeout_s: float, max_tokens: int, bounds: SchemaBounds, budget_chars: int
    ) -> None:
        self._model = model
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens
        self._bounds = bounds
        self._budget_chars = budget_chars

    async def execute(
        self,
        team: Team,
        objective: Objective,
        requirement: str,
        prior: Sequence[PriorArtifact],
        feedback: Sequence[str] = (),
    ) -> Execution:
        messages = build_messages(
            team, objective, requirement, prior, feedback=feedback, budget_chars=self._budget_chars
        )
        schema = response_schema(team, self._bounds)
        execution = Execution(result=blocked("not executed"))
        first = await self._call(team, objective, messages, schema, execution, "objective")
        try:
            execution.result = parse_task_result(first.text)
            return execution
        except OutputProblem as problem:
            repair = [
                *messages,
                Message(role="assistant", content=first.text[:_BAD_OUTPUT_ECHO_CHARS]),
                Message(
                    role="user",
                    content=f"That answer is invalid: {problem}. Reply with the corrected JSON object only.",
                ),
            ]
        second = await self._call(team, objective, repair, schema, execution, "repair")
        try:
            execution.result = parse_task_result(second.text)
        except OutputProblem as problem:
            execution.problem = str(problem)
            execution.system_blocked = True
            execution.result = blocked(
                f"model output failed validation twice: {problem}",
                reasoning=f"The {team.name} model's answer could not be repaired.",
            )
        return execution

    async def _call(
        self,
        team: Team,
        objective: Objective,
        messages: list[Message],
        schema: dict[str, object],
        execution: Execution,
        purpose: str,
    ) -> ChatResponse:
        request = ChatRequest(
            alias=team.alias,  # type: ignore[arg-type]
            messages=messages,
            json_schema=schema,
            max_tokens=self._max_tokens,
            run_id=objective.run_id,
            team=team.slug,
            purpose=purpose,
        )
        started = time.perf_counter()
        try:
            response = await self._model.complete(request, timeout_s=self._timeout_s)
        finally:
            execution.model_s += time.perf_counter() - started
        execution.responses.append(response)
        return response


def result_json(result: TaskResult) -> str:
    """A stable JSON text of a result, for audit and storage."""
    return json.dumps(result.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
