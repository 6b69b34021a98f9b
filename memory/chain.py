"""The audit hash chain: canonical payloads, link hashes and verification, shared by every store."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from memory.base import AuditAnchor, AuditEntry, AuditReport

GENESIS = "0" * 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def canonical(payload: dict[str, Any]) -> str:
    """The one text form of a payload that is hashed and stored. A lone surrogate (no character, so
    no UTF-8 and no place in PostgreSQL) is kept as its JSON escape, as a NUL is by ``json`` itself:
    the text stays storable and the payload it decodes to stays the same."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def link_hash(prev_sha256: str, run_id: str, seq: int, key: str, kind: str, payload: str) -> str:
    """Hash of one entry, bound to the previous one so no entry can move, change or vanish."""
    material = "\x1f".join((prev_sha256, run_id, str(seq), key, kind, payload))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def verify_chain(
    run_id: str,
    entries: Sequence[AuditEntry],
    expected_head: tuple[int, str] | None,
    *,
    anchor: AuditAnchor | None = None,
) -> AuditReport:
    """Check every link, the sequence, the head recorded outside the chain (a chain with entries
    and no head was cut: without the head a removed tail is invisible) and, when given, an anchor
    kept outside the database."""
    problems: list[str] = []
    prev = GENESIS
    for position, entry in enumerate(entries):
        if entry.seq != position:
            problems.append(f"entry {entry.seq} is at position {position}: an entry was removed or reordered")
        if entry.prev_sha256 != prev:
            problems.append(f"entry {entry.seq} does not link to the entry before it")
        recomputed = link_hash(entry.prev_sha256, run_id, entry.seq, entry.key, entry.kind, entry.payload)
        if recomputed != entry.sha256:
            problems.append(f"entry {entry.seq} ({entry.kind}) was altered: its hash does not match")
        prev = entry.sha256
    if expected_head is None and entries:
        problems.append(
            f"the chain has {len(entries)} entries but its recorded head is missing: the head was removed,"
            " so entries removed from the end could not be noticed"
        )
    if expected_head is not None:
        count, head = expected_head
        if count != len(entries) or head != prev:
            problems.append(
                f"the run records {count} entries ending in {head[:12]}, the chain has"
                f" {len(entries)} ending in {prev[:12]}: entries were removed or added"
            )
    if anchor is not None:
        problems.extend(anchor_problems(entries, anchor))
    return AuditReport(run_id=run_id, entries=len(entries), head_sha256=prev, intact=not problems, problems=problems)


def anchor_problems(entries: Sequence[AuditEntry], anchor: AuditAnchor) -> list[str]:
    """Why the chain does not hold the anchored entry at the anchored position (empty: it does)."""
    short = anchor.head_sha256[:12]
    if anchor.entries is None:  # an older anchor: the hash alone, at any position
        if any(e.sha256 == anchor.head_sha256 for e in entries):
            return []
        return [f"the {anchor.source} names entry {short}, not in the chain: it was removed or rewritten"]
    at = anchor.entries - 1
    if at < 0 or at >= len(entries):
        return [
            f"the {anchor.source} covers {anchor.entries} entries ending in {short}, the chain has only"
            f" {len(entries)}: entries were removed"
        ]
    if entries[at].sha256 != anchor.head_sha256 or entries[at].seq != at:
        return [
            f"the {anchor.source} says entry {at} is {short}, the chain's entry there is"
            f" {entries[at].sha256[:12]}: entries were removed or rewritten"
        ]
    return []
