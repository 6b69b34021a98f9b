"""What the chat's decision buttons and commands do, without Chainlit (unit-tested alone): who may
decide, the version the operator saw, and the desk's own rules (reasons required, who decided
first). The app only turns a button or a ``/command`` into a call here and shows the outcome."""

from __future__ import annotations

from typing import Any

from chat.access import Refused, require
from hitl.base import Escalation
from hitl.desk import DecisionDesk

KINDS = ("answer", "approve", "reject", "defer")
COMMANDS = {"/answer": "answer", "/approve": "approve", "/reject": "reject", "/defer": "defer"}


def seen_version(version: Any) -> int | None:
    """The version a button carried (None: decide on whatever is current, as a typed command does)."""
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version if version >= 0 else None
    if isinstance(version, str) and version.isdigit():
        return int(version)
    return None


async def decide(
    desk: DecisionDesk, user: Any, kind: str, escalation_id: str, version: Any, text: str | None
) -> Escalation:
    """One decision by ``user`` (a Chainlit user: ``identifier`` and ``metadata.role``)."""
    require(user, "decide")
    by, seen = str(user.identifier), seen_version(version)
    if kind == "answer":
        return await desk.answer(escalation_id, text or "", by=by, version=seen)
    if kind == "reject":
        return await desk.reject(escalation_id, reason=text or "", by=by, version=seen)
    if kind == "approve":
        return await desk.approve(escalation_id, by=by, notes=text or None, version=seen)
    if kind == "defer":
        return await desk.defer(escalation_id, by=by, version=seen)
    raise Refused(f"unknown decision {kind!r}; the decisions are {', '.join(KINDS)}")


def parse_command(text: str) -> tuple[str, str, str | None] | None:
    """``/answer ID TEXT`` · ``/approve ID [NOTES]`` · ``/reject ID REASON`` · ``/defer ID`` as
    (kind, escalation id, text); None when ``text`` is no decision command. A missing required text
    is left to the desk, whose refusal says what to write."""
    parts = text.strip().split(maxsplit=2)
    if not parts or parts[0].lower() not in COMMANDS:
        return None
    kind = COMMANDS[parts[0].lower()]
    if len(parts) < 2:
        raise Refused(
            f"{parts[0]} needs the escalation id: {parts[0]} ID" + (" TEXT" if kind in ("answer", "reject") else "")
        )
    return kind, parts[1], parts[2] if len(parts) > 2 else None
