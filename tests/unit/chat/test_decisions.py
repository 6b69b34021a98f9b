"""The chat's decision handlers on the in-memory desk: who may decide, the version seen, commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from chat.access import Refused, require
from chat.decisions import decide, parse_command, seen_version
from chat.governance import SECRET_VALUE, governance_changed, wipe_secret
from factory.errors import DecisionConflict, DecisionRefused
from hitl.base import Escalation, EscalationKind, EscalationStatus, Priority
from hitl.desk import DecisionDesk
from hitl.in_memory import InMemoryEscalationQueue
from hitl.sla import SlaPolicy
from memory.audit_memory import InMemoryAuditLog
from observability.base import Event

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@dataclass
class User:
    identifier: str
    metadata: dict[str, Any] = field(default_factory=dict)


ANA, BEN, VAL = User("ana", {"role": "operator"}), User("ben", {"role": "operator"}), User("val", {"role": "viewer"})


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.seen.append(event)


@pytest.fixture
async def desk() -> DecisionDesk:
    queue = InMemoryEscalationQueue()
    for n, kind in enumerate(["blocked", "approval", "budget"]):
        await queue.open(
            Escalation(
                id=f"esc-{n}", run_id="run-1", stage_index=n, team="qa-engineering", kind=EscalationKind(kind),
                priority=Priority.MEDIUM, question=f"q{n}?", sla_deadline=SlaPolicy().deadline(Priority.MEDIUM, NOW),
                created_at=NOW,
            )
        )  # fmt: skip
    return DecisionDesk(queue, InMemoryAuditLog(), Events(), clock=lambda: NOW)


async def test_an_operator_answers_and_the_escalation_records_who(desk: DecisionDesk) -> None:
    decided = await decide(desk, ANA, "answer", "esc-0", 0, "Use PostgreSQL.")
    assert decided.status is EscalationStatus.ANSWERED and decided.decided_by == "ana"
    assert decided.answer == "Use PostgreSQL."


async def test_a_viewer_is_refused_before_the_desk_is_asked(desk: DecisionDesk) -> None:
    for kind in ("answer", "approve", "reject", "defer"):
        with pytest.raises(Refused, match="val is a viewer and cannot decide"):
            await decide(desk, VAL, kind, "esc-1", 0, "text")
    assert all(e.waiting for e in await desk.queue.list_open())
    with pytest.raises(Refused):
        require(User("nobody"), "settings")  # no role at all is a viewer
    require(ANA, "settings")


async def test_the_second_operator_is_told_who_decided_first(desk: DecisionDesk) -> None:
    await decide(desk, ANA, "approve", "esc-1", 0, None)
    with pytest.raises(DecisionConflict, match="ana"):
        await decide(desk, BEN, "reject", "esc-1", 0, "no")


async def test_the_desk_rules_apply_to_chat_decisions(desk: DecisionDesk) -> None:
    with pytest.raises(DecisionRefused):
        await decide(desk, ANA, "answer", "esc-1", None, "an approval is not answered")
    with pytest.raises(DecisionRefused):
        await decide(desk, ANA, "reject", "esc-0", None, "")  # a reason is required
    with pytest.raises(Refused, match="unknown decision"):
        await decide(desk, ANA, "delete", "esc-0", None, None)
    deferred = await decide(desk, ANA, "defer", "esc-2", "0", None)
    assert deferred.status is EscalationStatus.DEFERRED and deferred.waiting


def test_versions_from_buttons() -> None:
    assert [seen_version(v) for v in (3, "4", None, "x", -1, True, 2.5)] == [3, 4, None, None, None, None, None]


def test_commands() -> None:
    assert parse_command("/answer esc-1 Use PostgreSQL for it") == ("answer", "esc-1", "Use PostgreSQL for it")
    assert parse_command("/APPROVE esc-2") == ("approve", "esc-2", None)
    assert parse_command("/reject esc-3 too risky") == ("reject", "esc-3", "too risky")
    assert parse_command("/verify run-1") is None and parse_command("hello") is None
    with pytest.raises(Refused, match="/answer ID TEXT"):
        parse_command("/answer")


def test_a_typed_key_leaves_every_copy_of_the_settings() -> None:
    values = {SECRET_VALUE: "sk-123", "secret_name": "OPENAI"}
    session = {SECRET_VALUE: "sk-123", "pipeline": "phase1"}
    assert wipe_secret(values, session) == "sk-123"
    assert values[SECRET_VALUE] == "" and session[SECRET_VALUE] == "" and "sk-123" not in repr((values, session))
    assert governance_changed({"confidence_floor": "0.6"}, {"confidence_floor": "0.6"}, "") is False
    assert governance_changed({"confidence_floor": "0.7"}, {"confidence_floor": "0.6"}, "") is True
    assert governance_changed({}, {}, "sk-1") is True


def test_a_blank_item_never_turns_a_label_into_a_heading() -> None:
    from markdown_it import MarkdownIt

    from chat.render import section

    html = MarkdownIt("commonmark").render("intro" + section("Assumptions", ["", "  ", "real one"]))
    assert "<h1" not in html and "<h2" not in html and "<li>real one</li>" in html
    assert section("Blockers", ["", " "]) == ""
