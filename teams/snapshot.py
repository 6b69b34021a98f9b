"""The end of a run: its immutable audit snapshot and the bundle's manifest (DESIGN §5).

The manifest also anchors the audit outside the database: it names the last entry it covers
(``audit_entries``, ``audit_head_sha256``), so a chain cut in the database, head and all, no longer
verifies against the bundle (``verify_run``).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

from memory.base import AuditAnchor, AuditEntry, AuditLog, AuditReport
from teams.base import Run, RunStatus, RunStore
from teams.bundle import MANIFEST_NAME as MANIFEST
from teams.bundle import write_manifest
from teams.records import checks_total

MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # far above any bundle's list of artifacts; a bound on what is read
_ANCHOR = "manifest anchor"


async def snapshot_run(store: RunStore, audit: AuditLog, run: Run) -> int:
    """Append the run's snapshot (requirement, every result, models, tokens, costs, artifact hashes,
    clarifications, escalations and decisions) and write the manifest; the number of artifacts."""
    stages = await store.stages(run.id)
    artifacts = await store.artifacts(run.id)
    recorded = await audit.entries(run.id)

    def payloads(*kinds: str) -> list[Any]:
        return [json.loads(e.payload) for e in recorded if e.kind in kinds]

    snapshot = {
        "requirement": run.requirement,
        "pipeline": run.pipeline,
        "results": {s.team: s.result.model_dump(mode="json") if s.result else None for s in stages},
        "models": {s.team: s.model for s in stages},
        "tokens": {s.team: [s.tokens_in, s.tokens_out] for s in stages},
        "cost_usd": round(sum(s.cost_usd for s in stages), 6),
        "artifacts": {a.name: a.sha256 for a in artifacts},
        "clarifications": payloads("clarification"),
        "escalations": payloads("escalation.opened", "escalation.decided", "escalation.deferred"),
        # The verification gate's figures: per team, and for the run (share checked, tests, security).
        "checks": {s.team: s.checks for s in stages if s.checks},
        "checks_total": checks_total(s.checks for s in stages),
        "parent_run_id": run.parent_run_id,
    }
    entry = await audit.append(run.id, "run.snapshot", "run.snapshot", snapshot)
    write_manifest(
        Path(run.artifacts_dir),
        {
            "run_id": run.id,
            "pipeline": run.pipeline,
            "artifacts": [a.model_dump(exclude={"run_id"}) for a in artifacts],
            **_anchor_fields(entry),
        },
    )
    return len(artifacts)


def _anchor_fields(entry: AuditEntry) -> dict[str, Any]:
    return {"audit_head_sha256": entry.sha256, "audit_entries": entry.seq + 1}


def anchor_manifest(root: Path, run_id: str, entry: AuditEntry) -> None:
    """Move the bundle's audit anchor to ``entry`` (e.g. the last entry a committed stage appended),
    keeping the rest of the manifest; an anchor already further on is kept (it never moves back).
    Blocking file I/O: call it off the event loop."""
    manifest: dict[str, Any] = {}
    try:
        found = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if isinstance(found, dict) and found.get("run_id") == run_id:
            manifest = found
    except (OSError, ValueError):
        pass  # none yet, or unreadable: written afresh below
    covered = manifest.get("audit_entries")
    if isinstance(covered, int) and covered > entry.seq + 1:
        return
    write_manifest(root, {**manifest, "run_id": run_id, **_anchor_fields(entry)})


def manifest_anchor(run: Run) -> tuple[AuditAnchor | None, list[str]]:
    """The audit anchor in the run's bundle manifest: (anchor, problems). No manifest: (None, []) for
    a run still going (it may have none yet), a problem for a complete one (its snapshot wrote one); a
    manifest that cannot be read or names no valid anchor is a problem: it is the record outside the
    database that the chain is compared with. Read as a plain file only (no link, no FIFO), bounded."""
    path = Path(run.artifacts_dir) / MANIFEST if run.artifacts_dir else None
    if path is None or not os.path.lexists(path):
        if run.status is RunStatus.COMPLETE:
            return None, [f"{_ANCHOR}: the manifest of the complete run ({path}) is missing; the record is gone"]
        return None, []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None, [f"{_ANCHOR}: {path} is not a plain file; not one the factory wrote"]
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            return None, [f"{_ANCHOR}: {path} is over {MAX_MANIFEST_BYTES} bytes; not one the factory wrote"]
        manifest = json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as exc:
        return None, [f"{_ANCHOR}: {path} cannot be read ({exc}); the record outside the database is damaged"]
    if not isinstance(manifest, dict) or manifest.get("run_id") != run.id:
        return None, [f"{_ANCHOR}: {path} is not the manifest of run {run.id}"]
    sha, count = manifest.get("audit_head_sha256"), manifest.get("audit_entries")
    valid_count = count is None or (isinstance(count, int) and not isinstance(count, bool) and count >= 1)
    if not isinstance(sha, str) or len(sha) != 64 or not valid_count:
        return None, [f"{_ANCHOR}: {path} names no valid audit head; the record outside the database is damaged"]
    return AuditAnchor(head_sha256=sha, entries=count, source=f"{_ANCHOR} ({path})"), []


async def verify_run(audit: AuditLog, run: Run) -> AuditReport:
    """Verify a run's audit chain, its recorded head and the anchor in its bundle's manifest."""
    anchor, problems = await asyncio.to_thread(manifest_anchor, run)
    report = await audit.verify(run.id, anchor=anchor)
    if not problems:
        return report
    return report.model_copy(update={"intact": False, "problems": [*report.problems, *problems]})
