"""The end of a run: its immutable audit snapshot and the bundle's manifest (DESIGN §5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memory.base import AuditLog
from teams.base import Run, RunStore
from teams.bundle import write_manifest


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
        "parent_run_id": run.parent_run_id,
    }
    entry = await audit.append(run.id, "run.snapshot", "run.snapshot", snapshot)
    write_manifest(
        Path(run.artifacts_dir),
        {
            "run_id": run.id,
            "pipeline": run.pipeline,
            "artifacts": [a.model_dump(exclude={"run_id"}) for a in artifacts],
            "audit_head_sha256": entry.sha256,
        },
    )
    return len(artifacts)
