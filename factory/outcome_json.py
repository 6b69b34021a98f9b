"""A run's outcome as JSON: the shape of `factory run --json` (DESIGN §10), shared by the REST API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teams.records import checks_total

if TYPE_CHECKING:
    from teams.pipeline import RunOutcome


def outcome_json(outcome: RunOutcome) -> dict[str, Any]:
    stages = []
    for s in outcome.stages:
        duration = (s.finished_at - s.started_at).total_seconds() * 1000 if s.finished_at and s.started_at else None
        stages.append(
            {
                "team": s.team,
                "status": s.status.value,
                "attempts": s.attempts,
                "clarifications": s.clarifications,
                "tokens_in": s.tokens_in,
                "tokens_out": s.tokens_out,
                "cost_usd": round(s.cost_usd, 6),
                "model": s.model,
                "duration_ms": round(duration, 1) if duration is not None else None,
                "checks": s.checks,  # the verification gate's figures (None: no checks ran)
            }
        )
    return {
        "run_id": outcome.run.id,
        "status": outcome.run.status.value,
        "stages": stages,
        "escalations": [
            {"id": e.id, "kind": e.kind.value, "priority": e.priority.value, "team": e.team, "question": e.question}
            for e in outcome.escalations
        ],
        "checks": checks_total(s.checks for s in outcome.stages),
        "audit": {"entries": outcome.audit.entries, "head_sha256": outcome.audit.head_sha256},
        "artifacts_dir": outcome.run.artifacts_dir,
        "error": outcome.error,
    }
