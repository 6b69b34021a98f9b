"""NEEDS_CLARIFICATION through the broker (twin): answered → re-executed; refused or timed out → escalated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from broker.base import BrokerLimits
from broker.in_memory import InMemoryBroker
from broker.responders import responding
from teams.base import RunStatus, StageStatus
from teams.clarify import TeamAnswerer
from teams.pipeline import RunOutcome
from teams.slugs import ALL_TEAMS
from tests.unit.teams.test_gate import Harness, result


def asks(target: str, question: str) -> dict[str, Any]:
    return result("NEEDS_CLARIFICATION", 0.4, clarification_needed={"target_team": target, "question": question})


async def run_with_responders(h: Harness, pipeline: str = "phase1") -> RunOutcome:
    assert h.broker is not None
    async with responding(h.broker, TeamAnswerer(h.runner, h.store, h.broker), ALL_TEAMS, consumer="test"):
        return await h.run(pipeline)


async def audit_of(h: Harness, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload) for e in await h.audit.entries(run_id) if e.kind == kind]


async def test_an_answered_question_is_fed_back_and_the_stage_completes(tmp_path: Path) -> None:
    script = {
        "teams": {
            "qa-engineering": [asks("backend-engineering", "Is /health public?")],
            # backend's first answer is its own stage; its second answers the question
            "backend-engineering": [result(), result(artifacts=[])],
        }
    }
    h = Harness(tmp_path, script, broker=InMemoryBroker())
    out = await run_with_responders(h)
    assert out.run.status is RunStatus.COMPLETE, out.escalations
    qa = out.stages[3]
    assert qa.status is StageStatus.COMPLETE and qa.clarifications == 1 and qa.attempts == 2
    [entry] = await audit_of(h, out.run.id, "clarification")
    assert entry["outcome"] == "answered" and entry["hop_chain"] == ["qa-engineering", "backend-engineering"]
    assert entry["question"] == "Is /health public?" and "scripted" in entry["answer"]
    qa_calls = [u for u in h.store.usage_rows if u.team == "qa-engineering"]
    assert len(qa_calls) == 2
    assert "clarification.answered" in h.events and "clarification.requested" in h.events
    counters = await h.broker.counters()  # type: ignore[union-attr]
    assert counters["requests"] == 1 and counters["replies"] == 1


async def test_a_self_addressed_question_is_refused_and_escalated_with_the_chain(tmp_path: Path) -> None:
    script = {"teams": {"qa-engineering": [asks("qa-engineering", "Do I test myself?")]}}
    h = Harness(tmp_path, script, broker=InMemoryBroker())
    out = await run_with_responders(h)
    assert out.run.status is RunStatus.WAITING_HUMAN
    [esc] = out.escalations
    assert esc.kind.value == "clarification" and esc.question == "Do I test myself?"
    assert esc.context["broker_outcome"] == "self_routing"
    assert esc.context["hop_chain"] == ["qa-engineering", "qa-engineering"]
    [entry] = await audit_of(h, out.run.id, "clarification")
    assert entry["outcome"] == "self_routing"


async def test_an_unanswered_question_times_out_into_an_escalation(tmp_path: Path) -> None:
    script = {"teams": {"business-analysis": [asks("product-management", "Who are the users?")]}}
    h = Harness(tmp_path, script, broker=InMemoryBroker(BrokerLimits(reply_timeout_s=0.2)))
    out = await h.run()  # no responders running
    [esc] = out.escalations
    assert esc.context["broker_outcome"] == "timeout" and "product-management" in esc.context["reason"]
    assert "clarification.refused" in h.events


async def test_the_cap_per_objective_stops_a_team_that_keeps_asking(tmp_path: Path) -> None:
    questions = [asks("product-management", f"Question {i}?") for i in range(6)]
    script = {"teams": {"business-analysis": questions}}
    h = Harness(tmp_path, script, broker=InMemoryBroker(BrokerLimits(max_per_objective=2)))
    out = await run_with_responders(h)
    [esc] = out.escalations
    assert esc.context["broker_outcome"] == "cap"
    stage = out.stages[0]
    assert stage.clarifications == 3 and stage.attempts == 3
    outcomes = [e["outcome"] for e in await audit_of(h, out.run.id, "clarification")]
    assert outcomes == ["answered", "answered", "cap"]


async def test_without_a_broker_the_question_goes_to_the_human(tmp_path: Path) -> None:
    script = {"teams": {"business-analysis": [asks("product-management", "Who are the users?")]}}
    h = Harness(tmp_path, script)
    out = await h.run()
    [esc] = out.escalations
    assert esc.kind.value == "clarification" and esc.context["broker_outcome"] == "unavailable"
