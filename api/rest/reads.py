"""``/v1/teams``, ``/v1/usage``, ``/v1/audit`` and ``/v1/routing``: what the factory knows and records."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.rest.app import Admin, State, Viewer
from api.rest.schemas import Question, RoutingChange
from factory.routing_service import alias_name, deployment

router = APIRouter()


@router.get("/teams", tags=["teams"], summary="The roster: every team, its mission and what it produces.")
async def teams(_: Viewer) -> list[dict[str, Any]]:
    from teams.roster import roster

    return [t.summary() for t in roster().values()]


@router.get("/usage", tags=["usage"], summary="Tokens, cost, calls and latency per team, alias or model.")
async def usage(
    api: State,
    _: Viewer,
    run: Annotated[str | None, Query(description="Only this run's calls.")] = None,
    last: Annotated[int | None, Query(description="The calls of the N most recent runs.")] = None,
    by: Annotated[str, Query(description="team, alias or model")] = "team",
) -> dict[str, Any]:
    report = await api.ops.usage(run_id=run, last=last, by=by)
    return report.model_dump(mode="json")


@router.get("/runs/{run_id}/audit", tags=["audit"], summary="A run's (or a group chat's) audit entries, oldest first.")
async def audit_entries(run_id: str, api: State, _: Viewer) -> dict[str, Any]:
    entries = await api.ops.audit_entries(run_id)
    return {
        "run_id": run_id,
        "entries": [{**e.model_dump(mode="json"), "payload": json.loads(e.payload)} for e in entries],
    }


@router.get("/runs/{run_id}/audit/verify", tags=["audit"], summary="Check the audit chain: intact or tampered.")
async def audit_verify(run_id: str, api: State, _: Viewer) -> JSONResponse:
    report = await api.ops.audit_verify(run_id)
    return JSONResponse(report.model_dump(mode="json"))


@router.get("/audit/search", tags=["audit"], summary="Search every run's audit (all words must match), best first.")
async def audit_search(
    api: State, _: Viewer, q: Annotated[str, Query(max_length=2000)], limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> dict[str, Any]:
    hits = await api.ops.audit_search(q, limit=limit)
    return {"query": q, "hits": [h.model_dump(mode="json") for h in hits]}


@router.post(
    "/ask", tags=["memory"], summary="Answer a question about a run or the factory from memory, with citations."
)
async def ask(body: Question, api: State, _: Viewer) -> dict[str, Any]:
    answer = await api.ops.ask(body.question, run_id=body.run_id)
    return answer.model_dump(mode="json")


@router.get("/routing", tags=["routing"], summary="Which models serve each alias, and where each setting comes from.")
async def routing(api: State, _: Viewer) -> dict[str, Any]:
    view = await api.ops.factory.routing.view()
    return view.as_json()


@router.put("/routing", tags=["routing"], summary="Set the chain of one alias (admin); runs started from now use it.")
async def set_routing(body: RoutingChange, api: State, token: Admin) -> dict[str, Any]:
    name = alias_name(body.alias)
    chain = [deployment(d, f"chain[{i}]") for i, d in enumerate(body.chain)]
    change = await api.ops.factory.routing.set(name, chain, by=token.actor)
    return {"alias": name, "chain": [d.id for d in chain], "version": change.version, "by": token.actor}
