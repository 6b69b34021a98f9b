"""The chain is checked against its head (which must exist) and an anchor kept outside the store."""

from __future__ import annotations

import pytest

from factory.errors import MemoryStoreError
from memory.audit_memory import InMemoryAuditLog
from memory.base import AuditAnchor
from memory.chain import verify_chain


async def _log(entries: int = 4) -> InMemoryAuditLog:
    log = InMemoryAuditLog()
    for i in range(entries):
        await log.append("run-x", f"k{i}", "step", {"i": i})
    return log


async def test_a_chain_without_its_head_is_not_intact_and_cannot_be_extended() -> None:
    log = await _log()
    assert (await log.verify("run-x")).intact
    del log._heads["run-x"]  # the tamperer removes the head
    report = await log.verify("run-x")
    assert not report.intact and any("head is missing" in p for p in report.problems), report.problems
    with pytest.raises(MemoryStoreError, match="cannot be extended"):
        await log.append("run-x", "k9", "step", {"i": 9})


async def test_a_cut_tail_with_its_head_rewritten_is_caught_by_the_anchor_only() -> None:
    log = await _log()
    entries = await log.entries("run-x")
    anchor = AuditAnchor(head_sha256=entries[-1].sha256, entries=len(entries))
    assert (await log.verify("run-x", anchor=anchor)).intact
    cut = entries[:2]  # the last two entries removed and the head moved back to match
    assert verify_chain("run-x", cut, (2, cut[-1].sha256)).intact  # the database alone cannot tell
    report = verify_chain("run-x", cut, (2, cut[-1].sha256), anchor=anchor)
    assert not report.intact and any("manifest anchor covers 4 entries" in p for p in report.problems)


async def test_the_anchor_names_one_entry_at_one_position_and_later_entries_do_not_matter() -> None:
    log = await _log()
    entries = await log.entries("run-x")
    at_two = AuditAnchor(head_sha256=entries[1].sha256, entries=2)
    assert (await log.verify("run-x", anchor=at_two)).intact  # entries 2 and 3 came after the anchor
    moved = AuditAnchor(head_sha256=entries[1].sha256, entries=3)
    report = await log.verify("run-x", anchor=moved)
    assert not report.intact and any("manifest anchor says entry 2" in p for p in report.problems)
    older = AuditAnchor(head_sha256=entries[2].sha256)  # a manifest naming the hash only
    assert (await log.verify("run-x", anchor=older)).intact
    gone = AuditAnchor(head_sha256="f" * 64)
    assert not (await log.verify("run-x", anchor=gone)).intact


async def test_an_empty_run_needs_no_head() -> None:
    assert (await InMemoryAuditLog().verify("run-none")).intact
