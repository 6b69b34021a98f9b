"""The MCP server driven by the `mcp` package's own client: over stdio (`factory mcp` as a subprocess) and
over streamable HTTP (a real `factory api`), on the test's PostgreSQL and Redis with the scripted model.
Tokens are made by the real `factory tokens create`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.types import CallToolResult, TextContent, TextResourceContents

from tests.integration.api_server import api_server, stored_tokens
from tests.integration.cli import FACTORY, factory

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."
TOOLS = {
    "factory_what_needs_me", "factory_show_escalation", "factory_answer", "factory_approve", "factory_reject",
    "factory_defer", "factory_submit", "factory_run_status", "factory_ask_project", "factory_verify_audit",
    "factory_list_runs", "factory_cancel_run",
}  # fmt: skip
CALL_S = 60.0


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    # every stage of the scripted model answers below the floor: each asks for an approval
    return {**env, "FACTORY_CONFIDENCE_FLOOR": "0.95", "FACTORY_API_RATE_PER_S": "200", "FACTORY_API_RATE_BURST": "400"}


@pytest.fixture
def tokens(env: dict[str, str]) -> dict[str, str]:
    return stored_tokens(env, {"viewer": ("dash", "viewer", None), "operator": ("ci-bot", "operator", "ana")})


@asynccontextmanager
async def over_stdio(env: dict[str, str], token: str, errlog: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=FACTORY, args=["mcp"], env={**env, "FACTORY_TOKEN": token})
    with errlog.open("w") as err:
        async with stdio_client(params, errlog=err) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=CALL_S)) as session:
                with anyio.fail_after(CALL_S):
                    await session.initialize()
                yield session


@asynccontextmanager
async def over_http(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=CALL_S) as http:
        async with streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, _):
            async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=CALL_S)) as session:
                with anyio.fail_after(CALL_S):
                    await session.initialize()
                yield session


def text_of(result: CallToolResult) -> str:
    [content] = result.content
    assert isinstance(content, TextContent)
    return content.text


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; the call must succeed."""
    with anyio.fail_after(CALL_S):
        result = await session.call_tool(tool, arguments)
    assert not result.isError, text_of(result)
    assert result.structuredContent is not None
    return result.structuredContent


async def refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    """The message of a tool's error result (the session goes on)."""
    with anyio.fail_after(CALL_S):
        result = await session.call_tool(tool, arguments)
    assert result.isError, result
    return text_of(result)


async def until(
    check: Callable[[], Awaitable[dict[str, Any]]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        got = await check()
        if done(got):
            return got
        assert time.monotonic() < deadline, got
        await anyio.sleep(0.25)


async def status_is(session: ClientSession, run_id: str, status: str) -> dict[str, Any]:
    return await until(lambda: call(session, "factory_run_status", run_id=run_id), lambda r: r["status"] == status)


async def resource(session: ClientSession, uri: str) -> str:
    with anyio.fail_after(CALL_S):
        [content] = (await session.read_resource(uri)).contents  # type: ignore[arg-type]
    assert isinstance(content, TextResourceContents)
    return content.text


async def test_over_stdio_an_assistant_submits_sees_the_run_wait_approves_it_and_sees_it_finish(
    env: dict[str, str], tokens: dict[str, str], tmp_path: Path
) -> None:
    async with over_stdio(env, tokens["operator"], tmp_path / "stderr.txt") as mcp:
        listed = await mcp.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        assert all(len(t.description or "") > 60 for t in listed.tools)  # an assistant reads what each is for

        submitted = await call(mcp, "factory_submit", requirement=REQ, pipeline="business-analysis")
        run_id = submitted["run_id"]
        assert submitted["status"] == "running" and submitted["continued_by"] == "here"
        waiting = await status_is(mcp, run_id, "waiting_human")
        [open_one] = waiting["escalations"]
        assert waiting["stages"][0]["team"] == "business-analysis" and open_one["id"] in waiting["headline"]

        needs = await call(mcp, "factory_what_needs_me")
        assert needs["headline"].startswith("1 waiting on you")
        [first] = needs["items"]
        assert (first["position"], first["escalation_id"], first["kind"]) == (1, open_one["id"], "approval")
        shown = await call(mcp, "factory_show_escalation", escalation_id=first["escalation_id"])
        assert shown["status"] == "open" and "factory_approve" in json.dumps(shown["decide_with"])

        with anyio.fail_after(CALL_S):
            prompt = await mcp.get_prompt("review_escalation", {"escalation_id": first["escalation_id"]})
        [message] = prompt.messages
        assert isinstance(message.content, TextContent)
        brief = message.content.text
        assert shown["question"] in brief and REQ in brief and "factory_approve" in brief and "SLA deadline" in brief

        approved = await call(mcp, "factory_approve", escalation_id=first["escalation_id"], notes="looks right")
        assert approved["escalation"]["decided_by"] == "ana (token ci-bot)"
        assert approved["escalation"]["status"] == "approved" and approved["continued_by"] == "here"
        done = await status_is(mcp, run_id, "complete")  # this process drives it: no worker is alive
        assert done["stages"][0]["status"] == "complete"
        audit = await call(mcp, "factory_verify_audit", run_id=run_id)
        assert audit["intact"] is True and audit["entries"] > 0 and audit["problems"] == []

        listed_files = json.loads(await resource(mcp, f"factory://runs/{run_id}/artifacts"))["artifacts"]
        assert listed_files, "the scripted stage wrote no artifact"
        one = listed_files[0]
        assert one["uri"] == f"factory://runs/{run_id}/artifacts/{quote(one['name'], safe='')}"
        on_disk = (Path(done["artifacts_dir"]) / one["name"]).read_text()
        assert await resource(mcp, one["uri"]) == on_disk
        assert json.loads(await resource(mcp, f"factory://runs/{run_id}"))["status"] == "complete"
        assert json.loads(await resource(mcp, "factory://attention"))["total"] == 0

        # refusals: the CLI's words, as tool errors; the session goes on
        cli = factory("hitl", "approve", "esc-nope", env=env)
        assert cli.returncode == 2
        said = await refused(mcp, "factory_approve", escalation_id="esc-nope")
        assert said == cli.stderr.strip().removeprefix("factory: ")
        assert "no escalation 'esc-nope'" in said
        again = await refused(mcp, "factory_approve", escalation_id=first["escalation_id"])
        assert "already approved by ana (token ci-bot)" in again
        bad = await refused(mcp, "factory_defer", escalation_id=first["escalation_id"], hours=-3)
        assert bad.startswith("invalid arguments for factory_defer: hours:") and "greater than 0" in bad
        missing = await refused(mcp, "factory_reject", escalation_id=first["escalation_id"])
        assert missing == "invalid arguments for factory_reject: reason: Field required"
        empty = await refused(mcp, "factory_submit", requirement="   ")
        assert "requirement is empty" in empty
        assert "no run 'run-nope'" in await refused(mcp, "factory_run_status", run_id="run-nope")
        with pytest.raises(McpError, match="no run 'run-nope'"):
            await resource(mcp, "factory://runs/run-nope")
        with pytest.raises(McpError, match="has no artifact '../etc/passwd'|contains '..'"):
            await resource(mcp, f"factory://runs/{run_id}/artifacts/{quote('../etc/passwd', safe='')}")
        assert (await call(mcp, "factory_list_runs", status="complete", limit=5))["runs"][0]["run_id"] == run_id

    assert factory("audit", "verify", run_id, env=env).returncode == 0  # the CLI agrees


async def test_over_http_a_viewer_reads_and_an_operator_decides(env: dict[str, str], tokens: dict[str, str]) -> None:
    with api_server(env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=CALL_S) as raw:
            anonymous = await raw.post("/mcp", json={})
            assert anonymous.status_code == 401 and "factory tokens create" in anonymous.json()["detail"]
            assert anonymous.headers["www-authenticate"].startswith("Bearer")  # refused before the MCP transport
            wrong = await raw.post("/mcp", json={}, headers={"Authorization": "Bearer fct_nope"})
            assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["detail"]
            assert (await raw.get("/api/v1/health")).json() == {"status": "ok"}  # the REST mount is as it was

        async with (
            over_http(server.url, tokens["operator"]) as operator,
            over_http(server.url, tokens["viewer"]) as viewer,
        ):
            assert {t.name for t in (await viewer.list_tools()).tools} == TOOLS
            run_id = (await call(operator, "factory_submit", requirement=REQ, pipeline="business-analysis"))["run_id"]
            await status_is(viewer, run_id, "waiting_human")
            [item] = (await call(viewer, "factory_what_needs_me"))["items"]

            denied = await refused(viewer, "factory_approve", escalation_id=item["escalation_id"])
            assert denied == (
                "token 'dash' has the viewer scope; this needs operator"
                " (create one with `factory tokens create NAME --scope operator`)"
            )
            assert "viewer scope" in await refused(viewer, "factory_submit", requirement=REQ)
            assert "no escalation 'esc-nope'" in await refused(
                operator, "factory_reject", escalation_id="esc-nope", reason="x"
            )

            approved = await call(operator, "factory_approve", escalation_id=item["escalation_id"])
            assert approved["escalation"]["decided_by"] == "ana (token ci-bot)"
            await status_is(viewer, run_id, "complete")
            assert (await call(viewer, "factory_verify_audit", run_id=run_id))["intact"] is True
            attention = json.loads(await resource(viewer, "factory://attention"))
            assert attention["headline"] == "nothing needs you" and attention["items"] == []


def test_factory_mcp_refuses_to_serve_without_a_valid_token(env: dict[str, str], tokens: dict[str, str]) -> None:
    def start(token: str | None) -> subprocess.CompletedProcess[str]:
        run_env = {k: v for k, v in env.items() if k != "FACTORY_TOKEN"}
        if token is not None:
            run_env["FACTORY_TOKEN"] = token
        return subprocess.run([FACTORY, "mcp"], env=run_env, input="", capture_output=True, text=True, timeout=120)

    missing = start(None)
    assert missing.returncode == 2 and missing.stdout == ""
    assert (
        "FACTORY_TOKEN is not set" in missing.stderr and "factory tokens create NAME --scope operator" in missing.stderr
    )
    garbled = start("not-a-token")
    assert garbled.returncode == 2 and "is not a factory token" in garbled.stderr and garbled.stdout == ""
    assert factory("tokens", "revoke", "dash", env=env).returncode == 0
    revoked = start(tokens["viewer"])
    assert revoked.returncode == 2 and revoked.stdout == ""
    assert "unknown or revoked" in revoked.stderr and revoked.stderr.startswith("factory: ")


def tool_call(n: int, name: str, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def test_stdout_carries_only_the_protocol_while_logs_go_to_stderr(env: dict[str, str], tokens: dict[str, str]) -> None:
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        tool_call(3, "factory_what_needs_me"),
        tool_call(4, "factory_run_status", run_id=""),
        tool_call(5, "factory_nope"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [FACTORY, "mcp"],
        env={**env, "FACTORY_TOKEN": tokens["viewer"], "FACTORY_LOG_LEVEL": "DEBUG"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for message in lines:
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()
    got: dict[int, dict[str, Any]] = {}
    while len(got) < 5:  # the answers to ids 1-5; then stdin closes and the server ends
        line = proc.stdout.readline()
        assert line, f"factory mcp ended early: {proc.stderr.read() if proc.stderr else ''}"
        answer = json.loads(line)  # every line of stdout is a JSON-RPC message
        assert answer["jsonrpc"] == "2.0"
        if "id" in answer:
            got[answer["id"]] = answer
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in out.splitlines() if line.strip())
    assert "DEBUG" in err or "Processing request" in err  # the logs went somewhere: standard error

    assert {t["name"] for t in got[2]["result"]["tools"]} == TOOLS
    assert got[3]["result"]["structuredContent"]["headline"] == "nothing needs you"
    assert got[4]["result"]["isError"] is True
    assert got[4]["result"]["content"][0]["text"].startswith("invalid arguments for factory_run_status: run_id:")
    assert got[5]["result"]["isError"] is True and "Unknown tool" in got[5]["result"]["content"][0]["text"]
