"""Executing one objective: build the prompt, call the team's model, validate, repair once."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memory.gateway import approx_tokens
from routing.base import ChatModel, ChatRequest, ChatResponse, Message
from teams.base import Objective
from teams.parsing import OutputProblem, json_object, validate_task_result
from teams.results import Artifact, TaskResult, blocked
from teams.roster import Team
from teams.schema import SchemaBounds, response_schema
from teams.slugs import TeamSlug
from teams.tools import AnyToolCall, ArtifactRecall, FileChecker, Recall, Toolbox, ToolProblem, ToolRecord

_BAD_OUTPUT_ECHO_CHARS = 2000


@dataclass(frozen=True)
class PriorArtifact:
    """An artifact of an earlier stage that this stage reads."""

    team: TeamSlug
    artifact: Artifact


@dataclass
class Execution:
    """The outcome of one execution of an objective."""

    result: TaskResult
    responses: list[ChatResponse] = field(default_factory=list)
    tool_calls: list[ToolRecord] = field(default_factory=list)
    system_blocked: bool = False
    problem: str | None = None
    model_s: float = 0.0
    compactions: int = 0  # times the growing buffer was retained to memory and truncated
    audit: tuple[str, str, dict[str, Any]] | None = None  # its audit entry (key, kind, payload)
    checks: dict[str, Any] | None = None  # the verification gate's reports and figures, for its audit entry


#: Called when an objective's messages pass the threshold of the context window: retains the batch
#: (run id, message texts) and returns the note that replaces it.
Compactor = Callable[[str, list[str]], Awaitable[str]]
COMPACT_AT = 0.8


_TOOL_HELP = {
    "recall": "recall(query) searches earlier artifacts",
    "write_artifact": "write_artifact(name, content) writes an extra file",
    "request_clarification": "request_clarification(target_team, question) asks another team and ends your turn",
    "check_files": "check_files(names?) runs your team's checks ({checks}) over the files you wrote with"
    " write_artifact (all of them, or the names listed) and says what failed",
}


def _tools_prompt(team: Team, tools: Sequence[str], rounds: int) -> str:
    if rounds <= 0 or not tools:
        return ""
    helps = (_TOOL_HELP[t].replace("{checks}", ", ".join(team.checks)) for t in tools)
    return (
        f"\nBefore your result you may make up to {rounds} tool calls, one per answer, as"
        ' {"tool": NAME, "arguments": {...}}: ' + "; ".join(helps) + "."
    )


def _system_prompt(team: Team, tools: Sequence[str], tool_rounds: int) -> str:
    return (
        f"You are the {team.name} team of an AI software factory.\n\n{team.soul}\n{team.agents}\n"
        "Answer with one JSON object and nothing else. Fields: status (COMPLETE when the"
        " deliverables are written, NEEDS_CLARIFICATION with clarification_needed when another"
        " team must answer a question first, BLOCKED with blockers when you cannot proceed),"
        " reasoning, blockers, assumptions_made, verified_facts, clarification_needed (or null),"
        " artifacts (each with name, kind and its full content) and confidence: how sure you are,"
        " from 0.0 to 1.0, that the artifacts meet the acceptance criteria (e.g. 0.85)."
    ) + _tools_prompt(team, tools, tool_rounds)


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
    tools: Sequence[str] = (),
    tool_rounds: int = 0,
    packed: str | None = None,
) -> list[Message]:
    """The prompt: identity, the requirement (always whole), context, the objective.

    The context is ``packed`` (memory's mental model and recall) when given, else the earlier
    artifacts the team reads, each cut to a fair share of ``budget_chars``."""
    deliverables = "\n".join(f"- {d.name} ({d.kind}): {d.description}" for d in team.produces)
    criteria = "\n".join(f"- {c}" for c in objective.acceptance_criteria)
    notes = "".join(f"Note: {f}\n" for f in feedback)
    user = (
        f"Requirement:\n{requirement}\n\n"
        f"{_context_block(prior, budget_chars) if packed is None else packed}"
        f"Objective (attempt {objective.attempt}): {objective.goal}\n\n"
        f"Acceptance criteria:\n{criteria}\n\nDeliverables:\n{deliverables}\n\n{notes}"
    )
    return [
        Message(role="system", content=_system_prompt(team, tools, tool_rounds)),
        Message(role="user", content=user),
    ]


class TeamRunner:
    """Runs objectives against a chat model.

    The model may make up to ``tool_rounds`` tool calls (teams.tools) before its result; malformed
    output gets one repair, then the objective ends BLOCKED. So one execution makes at most
    ``tool_rounds + 2`` model calls.
    """

    def __init__(
        self,
        model: ChatModel,
        *,
        timeout_s: float,
        max_tokens: int,
        bounds: SchemaBounds,
        budget_chars: int,
        tool_rounds: int = 3,
        window_tokens: int | None = None,
        count: Callable[[str], int] | None = None,
    ) -> None:
        self._model = model
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens
        self._bounds = bounds
        self._budget_chars = budget_chars
        self._tool_rounds = tool_rounds
        self._window_tokens = window_tokens
        self._count = count or approx_tokens

    async def execute(
        self,
        team: Team,
        objective: Objective,
        requirement: str,
        prior: Sequence[PriorArtifact],
        feedback: Sequence[str] = (),
        recall: Recall | None = None,
        *,
        packed: str | None = None,
        compact: Compactor | None = None,
        checker: FileChecker | None = None,
    ) -> Execution:
        """One execution of the objective; ``recall`` defaults to searching ``prior``; ``packed`` is
        the memory context (see ``build_messages``); ``compact`` bounds the growing buffer;
        ``checker`` runs the team's checks for ``check_files`` (not offered without one)."""
        recall_source = recall or ArtifactRecall([(p.team, p.artifact) for p in prior])
        toolbox = Toolbox(team, recall_source, checker=checker)
        messages = build_messages(
            team,
            objective,
            requirement,
            prior,
            feedback=feedback,
            budget_chars=self._budget_chars,
            tools=toolbox.offered,
            tool_rounds=self._tool_rounds,
            packed=packed,
        )
        execution = Execution(result=blocked("not executed"))
        repaired = False
        purpose = "clarification" if objective.hop_depth else "objective"
        rounds_left = self._tool_rounds
        for _ in range(self._tool_rounds + 2):
            offered = toolbox.offered if rounds_left > 0 else ()
            schema = response_schema(team, self._bounds, tools=offered)
            if compact is not None and len(messages) > 2 and self._over_window(messages):
                note = await compact(objective.run_id, [m.content for m in messages[2:]])
                messages = [*messages[:2], Message(role="user", content=f"{note}{_NEXT}")]
                execution.compactions += 1
            text = (await self._call(team, objective, messages, schema, execution, purpose)).text
            echo = Message(role="assistant", content=text[:_BAD_OUTPUT_ECHO_CHARS])
            try:
                answer = _answer(text, toolbox, tools_open=bool(offered))
            except ToolProblem as problem:
                execution.tool_calls.append(ToolRecord(problem.tool, {}, str(problem), ok=False))
                rounds_left = 0 if problem.final else rounds_left - 1
                messages += [echo, Message(role="user", content=f"Tool call rejected: {problem}.{_NEXT}")]
                purpose = "tool"
                continue
            except OutputProblem as problem:
                if repaired:
                    return _unrepairable(execution, team, problem)
                repaired = True
                fix = f"That answer is invalid: {problem}. Reply with the corrected JSON object only."
                messages += [echo, Message(role="user", content=fix)]
                purpose = "repair"
                continue
            if isinstance(answer, TaskResult):
                execution.result = toolbox.merge(answer)
                return execution
            arguments = answer.arguments.model_dump()
            try:
                told, final = await toolbox.run(answer)
                record = ToolRecord(answer.tool, arguments, told, ok=True)
            except ToolProblem as problem:  # the tool could not do its work (e.g. the checks could not run)
                told, final = f"Tool call failed: {problem}.", None
                record = ToolRecord(answer.tool, arguments, str(problem), ok=False)
            rounds_left -= 1
            execution.tool_calls.append(record)
            if final is not None:
                execution.result = final
                return execution
            messages += [echo, Message(role="user", content=f"{told}{_NEXT}")]
            purpose = "tool"
        return _unrepairable(execution, team, OutputProblem(f"no result after {self._tool_rounds + 2} model calls"))

    def _over_window(self, messages: Sequence[Message]) -> bool:
        """Whether the prompt, plus room for the answer, passes ``COMPACT_AT`` of the window."""
        if not self._window_tokens:
            return False
        used = sum(self._count(m.content) for m in messages) + self._max_tokens
        return used > COMPACT_AT * self._window_tokens

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


_NEXT = "\nCall another tool, or answer with your TaskResult JSON object."


def _answer(text: str, toolbox: Toolbox, *, tools_open: bool) -> TaskResult | AnyToolCall:
    """The model's answer as a result or a validated tool call."""
    data = json_object(text)
    if "tool" in data and "status" not in data:
        if not tools_open:
            raise OutputProblem("no tool calls are left; answer with the TaskResult JSON object")
        return toolbox.check(data)
    return validate_task_result(data)


def _unrepairable(execution: Execution, team: Team, problem: OutputProblem) -> Execution:
    execution.problem = str(problem)
    execution.system_blocked = True
    execution.result = blocked(
        f"model output failed validation twice: {problem}",
        reasoning=f"The {team.name} model's answer could not be repaired.",
    )
    return execution


def result_json(result: TaskResult) -> str:
    """A stable JSON text of a result, for audit and storage."""
    return json.dumps(result.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
