"""The decision desk: every operator action on an escalation, checked, recorded and announced.

answer (clarification, blocked) · approve with optional notes (approval, budget) · reject with a
reason (any kind) · defer to a new deadline · batch approve (low-risk kinds and priorities only) ·
the SLA ladder's ``tick``. A decision is one conditional update: of two operators deciding one
escalation, one wins and the other gets ``DecisionConflict`` naming who decided first. Every
decision has an author (a plain, non-empty name), is appended to the run's audit chain (who, when,
what, the text) with the decision itself, atomically, and is emitted as an event.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from factory.errors import DecisionConflict, DecisionRefused, EscalationNotFound, MemoryStoreError
from hitl.base import (
    Change,
    Clock,
    DecisionRecorder,
    Escalation,
    EscalationKind,
    EscalationQueue,
    EscalationStatus,
    Priority,
    SlaLevel,
)
from hitl.sla import SlaPolicy
from observability.base import Event, EventSink
from observability.text import unstorable

log = logging.getLogger(__name__)

SLA_ACTOR = "sla-ladder"  # decided_by of what the ladder's default action decides
MAX_DEFERRAL = timedelta(days=30)
MAX_TEXT_BYTES = 64 * 1024
MAX_AUTHOR_CHARS = 200
#: Unicode categories refused in an author's name: controls (NUL, ESC, CR ...), format characters
#: (bidirectional overrides, zero-width), surrogates (undecodable input), line/paragraph separators.
_NOT_IN_A_NAME = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_ANSWERABLE = frozenset({EscalationKind.CLARIFICATION, EscalationKind.BLOCKED})
_APPROVABLE = frozenset({EscalationKind.APPROVAL, EscalationKind.BUDGET})


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LowRisk:
    """What batch approval may decide: only these kinds, at only these priorities."""

    kinds: frozenset[EscalationKind] = frozenset({EscalationKind.APPROVAL})
    priorities: frozenset[Priority] = frozenset({Priority.LOW})

    def refusal(self, escalation: Escalation) -> str | None:
        """Why batch approval may not decide ``escalation``, or None if it may."""
        if escalation.kind not in _APPROVABLE:
            return f"a {escalation.kind.value} escalation needs an answer, not an approval"
        if escalation.kind not in self.kinds:
            return f"{escalation.kind.value} escalations are not low-risk; decide it on its own"
        if escalation.priority not in self.priorities:
            return f"{escalation.priority.value} priority is not low-risk; decide it on its own"
        return None


@dataclass
class BatchOutcome:
    approved: list[Escalation] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (escalation id, why)


def decision_audit(escalation: Escalation) -> tuple[str, str, dict[str, Any]]:
    """The audit entry of a decision: (key, kind, payload); the key makes recording it idempotent."""
    e = escalation
    payload = {
        "id": e.id,
        "stage": e.stage_index,
        "team": e.team,
        "kind": e.kind.value,
        "priority": e.priority.value,
        "question": e.question,
        "decision": e.status.value,
        "text": e.answer,
        "decided_by": e.decided_by,
        "decided_at": e.decided_at.isoformat() if e.decided_at else None,
        "at": (e.decided_at or e.sla_start()).isoformat(),
    }
    if e.status is EscalationStatus.DEFERRED:
        payload["sla_deadline"] = e.sla_deadline.isoformat()
        return f"escalation.{e.id}.deferred.{e.version}", "escalation.deferred", payload
    return f"escalation.{e.id}.decided", "escalation.decided", payload


def sla_audit(escalation: Escalation, level: SlaLevel) -> tuple[str, str, dict[str, Any]]:
    """The audit entry of one step of the SLA ladder, on the escalation as raised."""
    data = {
        "id": escalation.id,
        "team": escalation.team,
        "stage": escalation.stage_index,
        "priority": escalation.priority.value,
        "level": int(level),
        "step": level.name.lower(),
        "sla_deadline": escalation.sla_deadline.isoformat(),
    }
    return f"escalation.{escalation.id}.sla.{escalation.version}", "escalation.sla", data


def opened_audit(escalation: Escalation) -> tuple[str, str, dict[str, Any]]:
    """The audit entry of an escalation as it was opened (the key makes recording it idempotent)."""
    payload = escalation.model_dump(mode="json", exclude={"created_at", "sla_deadline"})
    return f"escalation.{escalation.id}", "escalation.opened", payload


def checked_text(value: str | None, what: str, *, required: bool) -> str | None:
    """A decision's text, stripped; ``DecisionRefused`` if empty (when required), not storable (a NUL or
    a lone surrogate) or too long."""
    if value is None or not value.strip():
        if required:
            raise DecisionRefused(f"the {what} is empty; write what the team should know")
        return None
    if problem := unstorable(value):  # a NUL or a lone surrogate (which has no UTF-8 size either)
        raise DecisionRefused(f"the {what} {problem}")
    if len(value.encode("utf-8")) > MAX_TEXT_BYTES:
        raise DecisionRefused(f"the {what} is over {MAX_TEXT_BYTES} bytes; shorten it")
    return value.strip()


def checked_author(by: str) -> str:
    """Who decides, stripped; ``DecisionRefused`` if empty, over ``MAX_AUTHOR_CHARS`` or holding a
    control or format character (a name is printed and recorded: it must be a plain line)."""
    author = by.strip()
    if not author:
        raise DecisionRefused("the decision has no author (the name is empty); say who decides")
    if len(author) > MAX_AUTHOR_CHARS:
        raise DecisionRefused(f"the author's name is over {MAX_AUTHOR_CHARS} characters; shorten it")
    if any(unicodedata.category(c) in _NOT_IN_A_NAME for c in author):
        raise DecisionRefused("the author's name contains a control character; give a plain name")
    return author


class DecisionDesk:
    """Operator decisions and the SLA ladder over an ``EscalationQueue``."""

    def __init__(
        self,
        queue: EscalationQueue,
        recorder: DecisionRecorder,
        events: EventSink,
        *,
        policy: SlaPolicy | None = None,
        low_risk: LowRisk | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.queue = queue
        self._recorder = recorder
        self._events = events
        self.policy = policy or SlaPolicy()
        self.low_risk = low_risk or LowRisk()
        self._clock = clock

    async def answer(self, escalation_id: str, text: str, *, by: str, version: int | None = None) -> Escalation:
        """Answer a question or what unblocks a team; the stage runs again with the answer."""
        answer, by = checked_text(text, "answer", required=True), checked_author(by)
        current = await self._waiting(escalation_id, version)
        if current.kind not in _ANSWERABLE:
            raise DecisionRefused(
                f"{current.id} is an approval escalation: approve it or reject it with a reason"
                if current.kind is EscalationKind.APPROVAL
                else f"{current.id} is a budget escalation: approve it (more budget) or reject it (the run stops)"
            )
        return await self._decide(current, EscalationStatus.ANSWERED, answer, by)

    async def approve(
        self, escalation_id: str, *, by: str, notes: str | None = None, version: int | None = None
    ) -> Escalation:
        """Approve a stage's artifacts (or more budget); the run continues."""
        text, by = checked_text(notes, "notes", required=False), checked_author(by)
        current = await self._waiting(escalation_id, version)
        if current.kind not in _APPROVABLE:
            raise DecisionRefused(
                f"{current.id} is a {current.kind.value} escalation: answer it (what the team needs)"
                " or reject it with a reason (the team proceeds on its assumptions)"
            )
        return await self._decide(current, EscalationStatus.APPROVED, text, by)

    async def reject(self, escalation_id: str, *, reason: str, by: str, version: int | None = None) -> Escalation:
        """Reject with a reason: the stage runs again with it as feedback (a budget: the run stops)."""
        text, by = checked_text(reason, "reason", required=True), checked_author(by)
        current = await self._waiting(escalation_id, version)
        return await self._decide(current, EscalationStatus.REJECTED, text, by)

    async def defer(
        self, escalation_id: str, *, by: str, until: datetime | None = None, version: int | None = None
    ) -> Escalation:
        """Put off the decision to ``until`` (default: one more SLA window); the run keeps waiting."""
        by = checked_author(by)
        current = await self._waiting(escalation_id, version)
        now = self._clock()
        deadline = until or self.policy.deadline(current.priority, now)
        if deadline <= now:
            raise DecisionRefused(f"the new deadline {deadline:%Y-%m-%d %H:%M %Z} is not in the future")
        if deadline - now > MAX_DEFERRAL:
            raise DecisionRefused(
                f"a decision can be put off {MAX_DEFERRAL.days} days at most; reject it if the run should not go on"
            )
        change = Change(
            status=EscalationStatus.DEFERRED, decided_by=by, sla_deadline=deadline, sla_started_at=now,
            escalation_level=0,
        )  # fmt: skip
        return await self._apply(current, change)

    async def batch_approve(
        self, escalation_ids: Sequence[str] | None, *, by: str, notes: str | None = None
    ) -> BatchOutcome:
        """Approve each low-risk escalation of ``escalation_ids`` (None: every waiting low-risk one);
        the others named are refused with the reason, and left as they were."""
        text, by = checked_text(notes, "notes", required=False), checked_author(by)
        outcome = BatchOutcome()
        if escalation_ids is None:
            candidates = await self.queue.list_open()
        else:
            candidates = []
            for escalation_id in dict.fromkeys(escalation_ids):
                found = await self.queue.get(escalation_id)
                if found is None:
                    outcome.refused.append((escalation_id, "no such escalation"))
                elif not found.waiting:
                    outcome.refused.append((escalation_id, f"already {found.status.value}"))
                else:
                    candidates.append(found)
        for escalation in candidates:
            why = self.low_risk.refusal(escalation)
            if why is not None and escalation_ids is None:
                continue  # --all: only what is low-risk is in the batch at all
            if why is not None:
                outcome.refused.append((escalation.id, why))
                continue
            try:
                outcome.approved.append(await self._decide(escalation, EscalationStatus.APPROVED, text, by))
            except DecisionConflict as exc:
                outcome.refused.append((escalation.id, str(exc)))
        return outcome

    async def tick(self) -> list[Escalation]:
        """One step of the SLA ladder over every waiting escalation; what it changed."""
        now = self._clock()
        changed = []
        for escalation in await self.queue.list_open():
            level = self.policy.level(escalation, now)
            try:
                current = await self._climb(escalation, level, now)
            except MemoryStoreError as exc:  # one run's broken audit does not stop the ladder for the others
                log.warning("SLA ladder: %s", exc)
                continue
            if current is None:
                continue  # decided or deferred meanwhile
            if current is not escalation:
                changed.append(current)
            if level is SlaLevel.FINAL and self.policy.auto_approves(current):
                note = "approved automatically: the SLA ran out and low-priority approvals are auto-approved"
                try:
                    changed.append(await self._decide(current, EscalationStatus.APPROVED, note, SLA_ACTOR))
                except DecisionConflict:  # an operator decided at that moment: theirs stands
                    pass
                except MemoryStoreError as exc:
                    log.warning("SLA ladder: %s", exc)
        return changed

    async def _climb(self, escalation: Escalation, level: SlaLevel, now: datetime) -> Escalation | None:
        """Raise ``escalation`` to ``level`` one step at a time, each step recorded and announced;
        None if it changed under us."""
        current = escalation
        for step in range(escalation.escalation_level + 1, level + 1):
            step_audit = functools.partial(sla_audit, level=SlaLevel(step))
            raised = await self.queue.set_level(current.id, current.version, step, audit=step_audit)
            if raised is None:
                return None
            current = raised
            key, kind, data = step_audit(current)
            await self._recorder.append(current.run_id, key, kind, data)  # a no-op if the queue recorded it
            await self._events.emit(Event(type=kind, run_id=current.run_id, data=data, at=now))
        return current

    async def _waiting(self, escalation_id: str, version: int | None) -> Escalation:
        current = await self.queue.get(escalation_id)
        if current is None:
            raise EscalationNotFound(f"no escalation {escalation_id!r}; see `factory hitl list`")
        if not current.waiting:
            raise DecisionConflict(_decided_already(current))
        if version is not None and version != current.version:
            raise DecisionConflict(
                f"{current.id} changed since you looked (version {version}, now {current.version}); look again"
            )
        return current

    async def _decide(self, current: Escalation, status: EscalationStatus, text: str | None, by: str) -> Escalation:
        change = Change(status=status, answer=text, decided_by=by, decided_at=self._clock())
        return await self._apply(current, change)

    async def _apply(self, current: Escalation, change: Change) -> Escalation:
        # The queue writes the decision's audit entry with the decision, atomically (a decision whose
        # entry cannot be written is not made); the append here is then a no-op (same key), and it
        # records the decision where the queue holds no audit writer.
        changed = await self.queue.apply(current.id, current.version, change, audit=decision_audit)
        if changed is None:
            latest = await self.queue.get(current.id)
            raise DecisionConflict(
                _decided_already(latest)
                if latest and not latest.waiting
                else f"{current.id} changed meanwhile; look again"
            )
        key, kind, payload = decision_audit(changed)
        await self._recorder.append(changed.run_id, key, kind, payload)
        await self._events.emit(Event(type=kind, run_id=changed.run_id, data=payload, at=self._clock()))
        return changed


def _decided_already(escalation: Escalation) -> str:
    when = f" at {escalation.decided_at:%Y-%m-%d %H:%M:%S %Z}" if escalation.decided_at else ""
    who = f" by {escalation.decided_by}" if escalation.decided_by else ""
    return f"{escalation.id} was already {escalation.status.value}{who}{when}; nothing was changed"
