"""``/v1/runs``: submit, list, read, cancel and revise runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.rest.app import Operator, State, Viewer
from api.rest.schemas import RevisionCreate, RunCancel, RunCreate
from factory.errors import InputError
from factory.outcome_json import outcome_json
from teams.base import Run, RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])


def run_json(run: Run) -> dict[str, Any]:
    """A run as lists show it (no stages)."""
    return {
        "run_id": run.id,
        "status": run.status.value,
        "pipeline": run.pipeline_name,
        "teams": list(run.pipeline),
        "requirement": run.requirement,
        "parent_run_id": run.parent_run_id,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
        "links": links(run.id),
    }


def links(run_id: str) -> dict[str, str]:
    base = f"/api/v1/runs/{run_id}"
    return {"self": base, "events": f"{base}/events", "audit": f"{base}/audit"}


@router.post("", status_code=202, summary="Submit a run; a worker (or this process) drives it.")
async def create_run(body: RunCreate, api: State, token: Operator, response: Response) -> dict[str, Any]:
    run, who = await api.ops.submit(body.requirement, body.pipeline, by=token.actor)
    response.headers["Location"] = links(run.id)["self"]
    return {**run_json(run), "continued_by": who}


@router.get("", summary="Runs, newest first; filter by status, page with `before`.")
async def list_runs(
    api: State,
    _: Viewer,
    status: Annotated[list[str] | None, Query(description="Only runs in these statuses (repeatable).")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    before: Annotated[str | None, Query(max_length=300, description="`next_before` of the previous page.")] = None,
) -> dict[str, Any]:
    statuses = [_status(s) for s in status or ()]
    page = await api.ops.runs(statuses=statuses, limit=limit, before=before)
    return {
        "runs": [run_json(r) for r in page.runs],
        "next_before": page.next_before,
    }


@router.get("/{run_id}", summary="A run with its stages, open escalations and audit head (as `factory run --json`).")
async def get_run(run_id: str, api: State, _: Viewer) -> dict[str, Any]:
    outcome = await api.ops.run(run_id)
    return {**outcome_json(outcome), **run_json(outcome.run)}


@router.post("/{run_id}/cancel", summary="Cancel a run, even while a worker drives it.")
async def cancel_run(run_id: str, body: RunCancel, api: State, token: Operator) -> dict[str, Any]:
    run = await api.ops.cancel(run_id, by=token.actor, reason=body.reason)
    return run_json(run)


@router.post("/{run_id}/revisions", status_code=202, summary="Revise a run from one team on, with feedback.")
async def revise_run(
    run_id: str, body: RevisionCreate, api: State, token: Operator, response: Response
) -> dict[str, Any]:
    run, who = await api.ops.revise(run_id, from_team=body.from_team, feedback=body.feedback, by=token.actor)
    response.headers["Location"] = links(run.id)["self"]
    return {**run_json(run), "continued_by": who}


@router.get("/{run_id}/artifacts", summary="The files a run's teams produced (names, sizes, hashes).")
async def artifacts(run_id: str, api: State, _: Viewer) -> dict[str, Any]:
    listed = await api.ops.artifacts(run_id)
    return {"run_id": run_id, "artifacts": [a.model_dump(mode="json") for a in listed]}


def _status(text: str) -> RunStatus:
    try:
        return RunStatus(text)
    except ValueError:
        raise InputError(f"unknown status {text!r}; the statuses are {', '.join(s.value for s in RunStatus)}") from None
