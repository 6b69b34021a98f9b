"""The audit hash chain: canonical payloads, link hashes and verification, shared by every store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from memory.base import AuditEntry, AuditReport

GENESIS = "0" * 64


def canonical(payload: dict[str, Any]) -> str:
    """The one text form of a payload that is hashed and stored."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def link_hash(prev_sha256: str, run_id: str, seq: int, key: str, kind: str, payload: str) -> str:
    """Hash of one entry, bound to the previous one so no entry can move, change or vanish."""
    material = "\x1f".join((prev_sha256, run_id, str(seq), key, kind, payload))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def verify_chain(run_id: str, entries: Sequence[AuditEntry], expected_head: tuple[int, str] | None) -> AuditReport:
    """Check every link, the sequence and, when known, the head recorded outside the chain."""
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
    if expected_head is not None:
        count, head = expected_head
        if count != len(entries) or head != prev:
            problems.append(
                f"the run records {count} entries ending in {head[:12]}, the chain has"
                f" {len(entries)} ending in {prev[:12]}: entries were removed or added"
            )
    return AuditReport(run_id=run_id, entries=len(entries), head_sha256=prev, intact=not problems, problems=problems)
