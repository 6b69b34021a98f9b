"""What every ``factory`` command shares: exit codes, errors, settings, JSON, run reports, progress."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from factory.errors import FactoryError

if TYPE_CHECKING:
    from factory.settings import Settings
    from teams.pipeline import RunOutcome

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_WAITING = 0, 1, 2, 3


def err(message: str, code: int) -> NoReturn:
    typer.echo(f"factory: {message}", err=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    from pydantic import ValidationError

    from factory.settings import Settings
    from observability.logs import configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        err(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", EXIT_INPUT)
    configure_logging(settings.log_level)
    return settings


def run_async(coro: Any) -> Any:
    try:
        import asyncio  # here, not at the top: commands that run nothing start faster

        return asyncio.run(coro)
    except FactoryError as exc:
        err(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err("interrupted; the run can be continued from its last committed stage", 130)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


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
        "audit": {"entries": outcome.audit.entries, "head_sha256": outcome.audit.head_sha256},
        "artifacts_dir": outcome.run.artifacts_dir,
        "error": outcome.error,
    }


def progress(total: int) -> Any:
    """A subscriber that prints one line per stage event to stderr."""
    import time

    started: dict[int, float] = {}

    def show(event: Any) -> None:
        d = event.data
        stage = d.get("stage")
        label = f"[{stage + 1}/{total}] {d.get('team', '')}" if stage is not None else ""
        if event.type == "stage.started":
            started[stage] = time.monotonic()
            typer.echo(f"  ... {label} running", err=True)
        elif event.type == "stage.completed":
            took = f"  {time.monotonic() - started[stage]:.1f}s" if stage in started else ""
            typer.echo(
                f"  ok  {label} complete  tokens {d['tokens_in']}/{d['tokens_out']}"
                f"  confidence {d['confidence']:.2f}{took}",
                err=True,
            )
        elif event.type == "escalation.opened":
            typer.echo(f"  !!  {label} needs you ({d['kind']}, {d['priority']}): {d['question']}", err=True)
        elif event.type == "run.failed":
            typer.echo(f"  xx  {label} failed: {d['error']}", err=True)

    return show


def show_progress(factory: Any, stages: int, as_json: bool) -> None:
    """Live per-stage lines on stderr: always for human output, and on a terminal even with --json."""
    if sys.stderr.isatty() or not as_json:
        factory.bus.subscribe(progress(stages))


def report(outcome: RunOutcome, as_json: bool) -> NoReturn:
    from teams.base import RunStatus

    if as_json:
        print_json(outcome_json(outcome))
    else:
        typer.echo(f"run {outcome.run.id}: {outcome.run.status.value}")
        typer.echo(f"artifacts: {outcome.run.artifacts_dir}")
        typer.echo(f"audit: {outcome.audit.entries} entries, head {outcome.audit.head_sha256[:16]}")
        for e in outcome.escalations:
            typer.echo(f"waiting on you: {e.id} [{e.kind.value}/{e.priority.value}] {e.team}: {e.question}")
        if outcome.error:
            typer.echo(f"error: {outcome.error}", err=True)
    status = outcome.run.status
    code = {RunStatus.COMPLETE: EXIT_OK, RunStatus.WAITING_HUMAN: EXIT_WAITING}.get(status, EXIT_FAILED)
    raise typer.Exit(code)
