"""The MCP resources (what an assistant may read and attach) and the reviewer's prompt.

Resources, each JSON unless said otherwise, each needing a viewer token:

- ``factory://attention``: the attention list, as ``GET /api/v1/escalations`` gives it;
- ``factory://runs/{run_id}``: a run with its stages, open escalations and audit head;
- ``factory://runs/{run_id}/artifacts``: the files its teams produced, each with its own URI;
- ``factory://runs/{run_id}/artifacts/{name}``: one file's text (``name`` percent-encoded, e.g.
  ``docs%2Fscope.md``), read strictly inside the run's bundle (``api.mcp.artifacts``).

The prompt ``review_escalation(escalation_id)`` gathers what a reviewer needs to decide an escalation and
asks for a recommendation, then the decision through the right tool.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from mcp.server.fastmcp import FastMCP
from pydantic import Field

from api.mcp import render
from api.mcp.artifacts import artifact_uri, read_artifact, recorded
from api.mcp.identity import Identity, current_request
from factory.errors import RunNotFound
from factory.operations import Operations
from factory.tokens import Scope

JSON = "application/json"
EscalationId = Annotated[str, Field(min_length=1, max_length=200, description="The escalation's id (esc-...).")]


def register_resources(server: FastMCP[Any], ops: Operations, identity: Identity) -> None:
    """Add the resources and the prompt to ``server`` (see the module docstring)."""

    async def viewer() -> None:
        await identity.require(current_request(server), Scope.VIEWER)

    @server.resource(
        "factory://attention",
        name="attention",
        title="What needs me",
        mime_type=JSON,
        description="Every escalation waiting on a human, most urgent first, with counts and a headline.",
    )
    async def attention() -> str:
        await viewer()
        return _json(render.attention_json(await ops.attention()))

    @server.resource(
        "factory://runs/{run_id}",
        name="run",
        title="A run",
        mime_type=JSON,
        description="A run with its stages, the escalations it waits on and its audit head.",
    )
    async def run(run_id: str) -> str:
        await viewer()
        return _json(render.run_view(await ops.run(run_id)))

    @server.resource(
        "factory://runs/{run_id}/artifacts",
        name="run_artifacts",
        title="A run's artifacts",
        mime_type=JSON,
        description="The files a run's teams produced: name, kind, team, size, SHA-256 and the URI to read each.",
    )
    async def artifacts(run_id: str) -> str:
        await viewer()
        listed = await ops.artifacts(run_id)
        rows = [a.model_dump(mode="json") | {"uri": artifact_uri(run_id, a.name)} for a in listed]
        return _json({"run_id": run_id, "artifacts": rows})

    @server.resource(
        "factory://runs/{run_id}/artifacts/{name}",
        name="run_artifact",
        title="One artifact",
        mime_type="text/plain",
        description="One file of a run's bundle, as text (name percent-encoded: docs%2Fscope.md);"
        " a note on top says if it is cut short or changed since the run wrote it.",
    )
    async def artifact(run_id: str, name: str) -> str:
        await viewer()
        listed = await ops.artifacts(run_id)
        found = recorded(listed, name, run_id)
        got = await asyncio.to_thread(read_artifact, Path(await _bundle(ops, run_id)), found)
        notes = []
        if got.truncated:
            notes.append(f"[the first {len(got.text.encode())} of {got.bytes} bytes]")
        if not got.intact:
            notes.append(f"[changed on disk since the run wrote it: SHA-256 {got.sha256}, recorded {found.sha256}]")
        return "\n".join([*notes, got.text]) if notes else got.text

    @server.prompt(
        name="review_escalation",
        title="Review an escalation",
        description="Gather what a reviewer needs to decide one escalation (question, why, reasoning,"
        " blockers, assumptions, artifact excerpts, choices, SLA) and ask for a decision through the right tool.",
    )
    async def review_escalation(escalation_id: EscalationId) -> str:
        await viewer()
        escalation = await ops.escalation(escalation_id)
        run = await ops.factory.store.get_run(escalation.run_id)
        return render.review_prompt(escalation, run.requirement if run else None, datetime.now(UTC))


async def _bundle(ops: Operations, run_id: str) -> str:
    run = await ops.factory.store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r}")
    return run.artifacts_dir


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
