"""Cancelling a run: an operator's action, the same for every front door (DESIGN §13).

A run that is not finished is cancelled even while another process drives it: its lease is seized
(``RunStore.seize``), so that driver's next write is refused (``LeaseLost``) and it stops, writing
nothing more. Under the seized lease the stage in flight (running, or waiting on a human) is marked
failed and the run cancelled, in one transaction: of two cancels at once, one commits that and the
other learns the run is cancelled already. Then the run's waiting escalations are closed (a decision
on one is refused from then on), and the cancel is audited, anchored in the bundle's manifest and
announced. A run cancelled is never driven again: workers claim running and waiting runs only, and
``PipelineEngine.drive`` leaves a cancelled run as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from factory.errors import FactoryError, LeaseLost, RunBusy, RunFinished, RunNotFound
from hitl.desk import checked_author, checked_text, decision_audit
from observability.base import Event
from observability.logs import log_context
from teams.base import Run, RunStatus, RunStore, StageRecord, StageStatus
from teams.records import PipelineDeps
from teams.snapshot import anchor_manifest

log = logging.getLogger(__name__)

#: Where a run stops for good.
FINISHED = frozenset({RunStatus.COMPLETE, RunStatus.FAILED, RunStatus.CANCELLED})
#: A stage in these is in flight: a cancel marks it failed.
IN_FLIGHT = frozenset(
    {StageStatus.RUNNING, StageStatus.WAITING_HUMAN, StageStatus.BLOCKED, StageStatus.NEEDS_CLARIFICATION}
)
#: How long a cancel that lost the run to another cancel waits for that one to commit.
OTHER_CANCEL_WAIT_S = 10.0


async def cancel_run(deps: PipelineDeps, run_id: str, *, by: str, reason: str | None = None) -> Run:
    """Cancel the run ``run_id`` on behalf of ``by``; the run as cancelled.

    ``RunNotFound`` for an unknown run, ``RunFinished`` for one complete, failed or cancelled already
    (also when another cancel wins the race), ``DecisionRefused`` for a bad ``by`` or ``reason``."""
    author, why = checked_author(by), checked_text(reason, "reason", required=False)
    store = deps.store
    with log_context(run_id=run_id):
        run = await _unfinished(store, run_id)  # refused before anything is seized
        lease = await store.seize(run_id)
        try:
            async with store.holding(lease):
                await _unfinished(store, run_id)  # again, under the lease: nothing else commits now
                stages = await store.stages(run_id)
                stopped = _in_flight(stages)
                await store.set_run_status(run_id, RunStatus.CANCELLED, lease=lease, stages=stopped)
        except LeaseLost as exc:  # another cancel seized the run meanwhile: it commits, not this one
            raise await _cancelled_by_another(store, run_id) from exc
        log.info("run %s cancelled by %s%s", run_id, author, f": {why}" if why else "")
        stage = next(iter(stopped), None) or next((s for s in stages if s.status is not StageStatus.COMPLETE), None)
        closed = await _close_escalations(deps, run_id, author, why)
        await _record(deps, run, author, why, stage, closed)
        cancelled = await store.get_run(run_id)
    assert cancelled is not None  # runs are never deleted
    return cancelled


async def _unfinished(store: RunStore, run_id: str) -> Run:
    """The run, or ``RunNotFound`` / ``RunFinished``."""
    run = await store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r}; check the id (`factory audit search` finds past runs)")
    if run.status in FINISHED:
        raise RunFinished(f"run {run_id} is already {run.status.value}; nothing to cancel")
    return run


def _in_flight(stages: list[StageRecord]) -> list[StageRecord]:
    """The stage in flight (running, or waiting on a human), marked failed now; none if the run stood
    between two stages or had not started."""
    return [
        s.model_copy(update={"status": StageStatus.FAILED, "finished_at": datetime.now(UTC)})
        for s in stages
        if s.status in IN_FLIGHT
    ]


async def _cancelled_by_another(store: RunStore, run_id: str) -> RunFinished | RunBusy:
    """The error of a cancel whose seized lease another cancel seized in turn: ``RunFinished`` once
    that one committed (bounded wait), else ``RunBusy``."""
    deadline = time.monotonic() + OTHER_CANCEL_WAIT_S
    while time.monotonic() < deadline:
        run = await store.get_run(run_id)
        if run is not None and run.status in FINISHED:
            return RunFinished(f"run {run_id} is already {run.status.value}; nothing to cancel")
        await asyncio.sleep(0.1)
    return RunBusy(f"another cancel of run {run_id} took it over and has not finished; look at the run again")


async def _close_escalations(deps: PipelineDeps, run_id: str, by: str, reason: str | None) -> list[str]:
    """Close the run's waiting escalations, each recorded and announced as a decision is; their ids."""
    closed = await deps.escalations.close_for_run(run_id, by=by, reason=reason, audit=decision_audit)
    for escalation in closed:
        key, kind, payload = decision_audit(escalation)
        await deps.audit.append(run_id, key, kind, payload)  # a no-op where the queue recorded it with the change
        await deps.events.emit(Event(type=kind, run_id=run_id, data=payload, at=datetime.now(UTC)))
    return [e.id for e in closed]


async def _record(
    deps: PipelineDeps, run: Run, by: str, reason: str | None, stage: StageRecord | None, closed: list[str]
) -> None:
    """The cancel in the run's audit (the kind a budget's rejection cancels with), the audit's anchor
    in the bundle's manifest moved to it (so a chain cut back to before the cancel is noticed), and
    the live stream. ``stage``: where the run stopped (the stage in flight, else the next to run)."""
    where = {"stage": stage.index, "team": stage.team} if stage is not None else {}
    payload = {"by": by, "reason": reason, "stage": None, "team": None, **where, "escalations": closed}
    entry = await deps.audit.append(run.id, "run.cancelled", "run.cancelled", payload)
    if run.artifacts_dir:
        try:
            await asyncio.to_thread(anchor_manifest, Path(run.artifacts_dir), run.id, entry)
        except (FactoryError, OSError) as exc:  # the cancel is committed: a bundle that refuses it is reported
            log.warning("run %s: the audit anchor in the manifest was not moved: %s", run.id, exc)
    data = {"by": by, "reason": reason, **where, "escalations": closed}
    await deps.events.emit(Event(type="run.cancelled", run_id=run.id, data=data, at=datetime.now(UTC)))
