"""The REST API over real HTTP: a `factory api` process (uvicorn on loopback) on the test's
PostgreSQL and Redis, tokens made by the real `factory tokens create`, the scripted model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.api_server import ApiServer, api_server, create_token, stored_tokens
from tests.integration.cli import factory

pytestmark = pytest.mark.integration
REQ = "Build a URL shortener service with an HTTP API: create links, redirect, count clicks."
PROBLEM = "application/problem+json"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    # every stage of the scripted model answers below the floor: each asks for an approval; the webhook
    # test's receiver is on loopback, which FACTORY_WEBHOOK_ALLOW_PRIVATE must allow
    return {**env, "FACTORY_CONFIDENCE_FLOOR": "0.95", "FACTORY_API_RATE_PER_S": "200", "FACTORY_API_RATE_BURST": "400",
            "FACTORY_WEBHOOK_ALLOW_PRIVATE": "true"}  # fmt: skip


@pytest.fixture
def tokens(env: dict[str, str]) -> dict[str, str]:
    # through the store: `factory tokens create` itself is tested in test_tokens_cli (and below, once)
    specs = {
        "viewer": ("dash", "viewer", None),
        "operator": ("ci-bot", "operator", "ana"),
        "admin": ("root", "admin", None),
    }
    return stored_tokens(env, specs)


@pytest.fixture
def server(env: dict[str, str], tokens: dict[str, str]) -> Iterator[ApiServer]:
    with api_server(env) as running:
        yield running


def client(server: ApiServer, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    made = httpx.Client(base_url=server.api, headers=headers, timeout=30)
    server.closing.append(made.close)
    return made


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("https://")
    return body


def wait_status(api: httpx.Client, run_id: str, *statuses: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = api.get(f"/runs/{run_id}")
        assert got.status_code == 200, got.text
        run: dict[str, Any] = got.json()
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"run stayed {run['status']}"
        time.sleep(0.2)


def test_a_run_submitted_and_approved_through_the_api_goes_all_the_way(
    server: ApiServer, tokens: dict[str, str], pg_url: str, env: dict[str, str]
) -> None:
    viewer, operator = client(server, tokens["viewer"]), client(server, tokens["operator"])
    assert httpx.get(f"{server.api}/health").json() == {"status": "ok"}

    created = operator.post("/runs", json={"requirement": REQ, "pipeline": "business-analysis"})
    assert created.status_code == 202, created.text
    run_id = created.json()["run_id"]
    assert created.headers["location"] == f"/api/v1/runs/{run_id}" and created.json()["continued_by"] == "here"

    waiting = wait_status(viewer, run_id, "waiting_human")
    [item] = waiting["escalations"]
    assert item["kind"] == "approval" and waiting["stages"][0]["team"] == "business-analysis"
    listed = viewer.get("/escalations").json()
    assert listed["headline"].startswith("1 waiting on you") and [i["id"] for i in listed["items"]] == [item["id"]]
    shown = viewer.get(f"/escalations/{item['id']}").json()
    assert shown["run_id"] == run_id and shown["status"] == "open"

    refused = problem(viewer.post(f"/escalations/{item['id']}/approve", json={}), 403)
    assert "viewer scope" in refused["detail"] and "operator" in refused["detail"]
    stale = operator.post(f"/escalations/{item['id']}/approve", json={"version": shown["version"] + 5})
    assert problem(stale, 409)["detail"]
    approved = operator.post(f"/escalations/{item['id']}/approve", json={"notes": "fine", "version": shown["version"]})
    assert approved.status_code == 200, approved.text
    assert approved.json()["escalation"]["decided_by"] == "ana (token ci-bot)"
    assert approved.json()["continued_by"] == "here"
    done = wait_status(viewer, run_id, "complete")
    assert done["stages"][0]["status"] == "complete" and done["audit"]["entries"] > 0
    again = problem(operator.post(f"/escalations/{item['id']}/approve", json={}), 409)
    assert "already approved by ana (token ci-bot)" in again["detail"]

    verified = viewer.get(f"/runs/{run_id}/audit/verify").json()
    assert verified["intact"] is True
    entries = viewer.get(f"/runs/{run_id}/audit").json()["entries"]
    [created] = [e["payload"] for e in entries if e["kind"] == "run.created"]
    assert created["submitted_by"] == "ana (token ci-bot)"
    [decision] = [e["payload"] for e in entries if e["kind"] == "escalation.decided"]
    assert (decision["decided_by"], decision["decision"]) == ("ana (token ci-bot)", "approved")
    hits = viewer.get("/audit/search", params={"q": "shortener"}).json()["hits"]
    assert run_id in {h["run_id"] for h in hits}
    assert factory("audit", "verify", run_id, env=env).returncode == 0  # the CLI agrees
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone() == ("complete",)


def test_every_refusal_is_a_problem_with_the_words_the_cli_would_use(server: ApiServer, tokens: dict[str, str]) -> None:
    anonymous, viewer, operator = (
        client(server, None),
        client(server, tokens["viewer"]),
        client(server, tokens["operator"]),
    )
    assert "factory tokens create" in problem(anonymous.get("/runs"), 401)["detail"]
    assert problem(client(server, "fct_not-a-real-token").get("/runs"), 401)["detail"].startswith(
        "the token is unknown"
    )
    basic = httpx.get(f"{server.api}/runs", headers={"Authorization": "Basic YTpi"})
    assert "Bearer" in problem(basic, 401)["detail"] and basic.headers["www-authenticate"].startswith("Bearer")
    assert problem(viewer.post("/runs", json={"requirement": REQ}), 403)["type"].endswith("scope-too-narrow")

    empty = problem(operator.post("/runs", json={"requirement": "   "}), 422)
    assert "requirement is empty" in empty["detail"]
    unknown_team = problem(operator.post("/runs", json={"requirement": REQ, "pipeline": "nope"}), 422)
    assert "nope" in unknown_team["detail"]
    missing = problem(operator.post("/runs", json={"pipeline": "phase1"}), 422)
    assert missing["errors"][0]["field"] == "requirement"
    extra = problem(operator.post("/runs", json={"requirement": REQ, "pipline": "x"}), 422)
    assert "pipline" in extra["detail"]
    bad_json = operator.post("/runs", content=b'{"requirement": ', headers={"content-type": "application/json"})
    assert "not valid JSON" in problem(bad_json, 400)["detail"]
    huge = operator.post("/runs", content=b"x" * (300 * 1024), headers={"content-type": "application/json"})
    assert "over 262144 bytes" in problem(huge, 413)["detail"]

    def chunked() -> Iterator[bytes]:
        for _ in range(300):
            yield b"y" * 1024

    streamed = operator.post("/runs", content=chunked(), headers={"content-type": "application/json"})
    assert problem(streamed, 413)["type"].endswith("body-too-large")

    assert "no run 'run-nope'" in problem(viewer.get("/runs/run-nope"), 404)["detail"]
    assert problem(viewer.get("/escalations/esc-nope"), 404)["detail"]
    assert problem(operator.post("/escalations/esc-nope/answer", json={"text": "x"}), 404)
    assert problem(viewer.get("/runs/run-nope/events"), 404)
    assert problem(viewer.get("/nowhere"), 404)["detail"].startswith("no such endpoint")
    assert "unknown status" in problem(viewer.get("/runs", params={"status": "sleeping"}), 422)["detail"]


def test_the_openapi_document_describes_every_operation(server: ApiServer) -> None:
    doc = httpx.get(f"{server.api}/openapi.json").json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "AI Software Factory API"
    paths = doc["paths"]
    expected = {
        ("/v1/runs", "post"), ("/v1/runs", "get"), ("/v1/runs/{run_id}", "get"), ("/v1/runs/{run_id}/cancel", "post"),
        ("/v1/runs/{run_id}/revisions", "post"), ("/v1/runs/{run_id}/events", "get"),
        ("/v1/runs/{run_id}/artifacts", "get"), ("/v1/escalations", "get"), ("/v1/escalations/{escalation_id}", "get"),
        ("/v1/escalations/{escalation_id}/answer", "post"), ("/v1/escalations/{escalation_id}/approve", "post"),
        ("/v1/escalations/{escalation_id}/reject", "post"), ("/v1/escalations/{escalation_id}/defer", "post"),
        ("/v1/escalations/batch-approve", "post"), ("/v1/teams", "get"), ("/v1/usage", "get"),
        ("/v1/runs/{run_id}/audit", "get"), ("/v1/runs/{run_id}/audit/verify", "get"), ("/v1/audit/search", "get"),
        ("/v1/routing", "get"), ("/v1/routing", "put"), ("/v1/ask", "post"), ("/v1/webhooks", "get"),
        ("/v1/webhooks", "post"), ("/v1/webhooks/{webhook_id}", "delete"), ("/v1/webhooks/deliveries", "get"),
        ("/v1/webhooks/deliveries/{delivery_id}/replay", "post"), ("/v1/webhooks/{webhook_id}/test", "post"),
    }  # fmt: skip
    assert expected <= {(p, m) for p, ops in paths.items() for m in ops}
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert paths["/v1/runs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RunCreate"
    )
    assert doc["servers"] == [{"url": "/api"}]  # paths are relative to the mount


def test_runs_are_listed_newest_first_filtered_and_paged(server: ApiServer, tokens: dict[str, str]) -> None:
    operator = client(server, tokens["operator"])
    ids = []
    for n in range(3):
        made = operator.post("/runs", json={"requirement": f"{REQ} #{n}", "pipeline": "business-analysis"})
        ids.append(made.json()["run_id"])
    for run_id in ids:
        wait_status(operator, run_id, "waiting_human")
    first = operator.get("/runs", params={"limit": 2}).json()
    assert [r["run_id"] for r in first["runs"]] == ids[::-1][:2] and first["next_before"]
    second = operator.get("/runs", params={"limit": 2, "before": first["next_before"]}).json()
    assert [r["run_id"] for r in second["runs"]] == [ids[0]] and second["next_before"] is None
    waiting = operator.get("/runs", params=[("status", "waiting_human"), ("status", "running")]).json()
    assert {r["run_id"] for r in waiting["runs"]} == set(ids)
    assert operator.get("/runs", params={"status": "complete"}).json()["runs"] == []

    cancelled = operator.post(f"/runs/{ids[0]}/cancel", json={"reason": "not needed"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert "already cancelled" in problem(operator.post(f"/runs/{ids[0]}/cancel", json={}), 409)["detail"]
    assert ids[0] not in {i["run_id"] for i in operator.get("/escalations").json()["items"]}

    batch = operator.post("/escalations/batch-approve", json={"ids": [], "all_low_risk": False})
    assert "name the escalations" in problem(batch, 422)["detail"]


def test_a_token_over_its_rate_is_told_when_to_retry(env: dict[str, str]) -> None:
    token = create_token(env, "greedy", "viewer")
    with api_server({**env, "FACTORY_API_RATE_PER_S": "0.5", "FACTORY_API_RATE_BURST": "3"}) as server:
        api = client(server, token)
        codes = [api.get("/teams").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = api.get("/teams")
        assert problem(limited, 429)["detail"].startswith("token 'greedy' is over its rate limit")
        assert int(limited.headers["retry-after"]) >= 1


def test_routing_is_read_by_any_token_and_changed_only_by_an_admin(server: ApiServer, tokens: dict[str, str]) -> None:
    viewer, operator, admin = (client(server, tokens[s]) for s in ("viewer", "operator", "admin"))
    view = viewer.get("/routing")
    assert view.status_code == 200 and "factory/coder" in json.dumps(view.json())
    change = {"alias": "coder", "chain": [{"model": "ollama_chat/qwen2.5", "api_base": "http://127.0.0.1:11434"}]}
    assert problem(operator.put("/routing", json=change), 403)["detail"].startswith("token 'ci-bot' has the operator")
    bad = problem(admin.put("/routing", json={**change, "alias": "poet"}), 422)
    assert "unknown alias 'poet'" in bad["detail"]
    done = admin.put("/routing", json=change)
    assert done.status_code == 200, done.text
    assert done.json()["chain"] == ["ollama_chat/qwen2.5@http://127.0.0.1:11434"] and done.json()["by"] == "token root"
    assert "ollama_chat/qwen2.5" in json.dumps(viewer.get("/routing").json())
    assert [t["slug"] for t in viewer.get("/teams").json()][:2] == ["product-management", "business-analysis"]


def sse_frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """The events of a text/event-stream, as {id, event, data} (comments and retry lines skipped)."""
    frame: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in frame:
                yield frame
            frame = {}
            continue
        field, _, value = line.partition(":")
        if field in ("id", "event", "data"):
            frame[field] = value.removeprefix(" ")


def test_live_events_resume_after_a_dropped_connection_with_nothing_missed_or_repeated(
    server: ApiServer, tokens: dict[str, str]
) -> None:
    viewer, operator = client(server, tokens["viewer"]), client(server, tokens["operator"])
    run_id = operator.post("/runs", json={"requirement": REQ, "pipeline": "business-analysis"}).json()["run_id"]
    waiting = wait_status(viewer, run_id, "waiting_human")

    seen: list[dict[str, str]] = []
    with viewer.stream("GET", f"/runs/{run_id}/events") as first:
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
        for frame in sse_frames(first.iter_lines()):
            seen.append(frame)
            if len(seen) == 2:
                break  # the connection drops here, mid-stream
    assert [f["event"] for f in seen] == ["run.started", "stage.started"]

    [item] = waiting["escalations"]
    with viewer.stream("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": seen[-1]["id"]}) as second:
        for frame in sse_frames(second.iter_lines()):
            seen.append(frame)
            if frame["event"] == "run.waiting_human":
                assert operator.post(f"/escalations/{item['id']}/approve", json={}).status_code == 200
        # the stream ends by itself after the run's final event
    assert seen[-1]["event"] == "run.completed"

    with viewer.stream("GET", f"/runs/{run_id}/events") as replay:  # the whole run, from its first event
        everything = list(sse_frames(replay.iter_lines()))
    assert [f["id"] for f in seen] == [f["id"] for f in everything]  # nothing missed, nothing repeated
    assert len({f["id"] for f in seen}) == len(seen)
    assert all(json.loads(f["data"])["run_id"] == run_id for f in seen)
    after = viewer.get(f"/runs/{run_id}/events", params={"after": everything[-2]["id"]})
    assert [f["event"] for f in sse_frames(iter(after.text.splitlines()))] == ["run.completed"]
    for bad in ("x", "99999999999999999999-0"):
        refused = viewer.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": bad})
        assert "not an event id" in problem(refused, 422)["detail"]
    ended = viewer.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": everything[-1]["id"]})
    assert ended.status_code == 204  # the run ended and nothing follows: an EventSource stops reconnecting


def test_every_decision_and_a_revision_through_the_api(env: dict[str, str], tokens: dict[str, str]) -> None:
    from tests.integration.conftest import write_script

    blocked = {"status": "BLOCKED", "reasoning": "r", "blockers": ["which datastore?"], "confidence": 0.3}
    write_script(env, {"teams": {"business-analysis": [blocked]}})
    with api_server({**env, "FACTORY_HITL_LOW_RISK_PRIORITIES": "low,medium"}) as server:
        operator, viewer = client(server, tokens["operator"]), client(server, tokens["viewer"])
        run_id = operator.post("/runs", json={"requirement": REQ, "pipeline": "business-analysis"}).json()["run_id"]

        def waiting_on(after: dict[str, Any] | None = None) -> dict[str, Any]:
            """The one escalation the run waits on next (not ``after``, the one just decided)."""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                run = viewer.get(f"/runs/{run_id}").json()
                items = run["escalations"]
                if run["status"] == "waiting_human" and len(items) == 1 and items[0]["id"] != (after or {}).get("id"):
                    item: dict[str, Any] = items[0]
                    return item
                time.sleep(0.2)
            raise AssertionError(f"run {run_id} did not wait on a new escalation")

        first = waiting_on()
        assert first["kind"] == "blocked"
        assert "answer it" in problem(operator.post(f"/escalations/{first['id']}/approve", json={}), 422)["detail"]
        answered = operator.post(f"/escalations/{first['id']}/answer", json={"text": "PostgreSQL"}).json()
        assert answered["escalation"]["status"] == "answered" and answered["continued_by"] == "here"

        second = waiting_on(first)
        assert second["kind"] == "approval"
        assert (
            "reason is empty"
            in problem(operator.post(f"/escalations/{second['id']}/reject", json={"reason": " "}), 422)["detail"]
        )
        rejected = operator.post(f"/escalations/{second['id']}/reject", json={"reason": "name the tables"}).json()
        assert rejected["escalation"]["status"] == "rejected"

        third = waiting_on(second)
        both = problem(
            operator.post(f"/escalations/{third['id']}/defer", json={"hours": 2, "until": "2030-01-01T00:00:00"}), 422
        )
        assert "not both" in both["detail"]
        deferred = operator.post(f"/escalations/{third['id']}/defer", json={"hours": 2}).json()
        assert deferred["escalation"]["status"] == "deferred" and deferred["continued_by"] == "nobody"
        assert "keeps waiting" in deferred["next"]
        batch = operator.post("/escalations/batch-approve", json={"all_low_risk": True, "notes": "ok"}).json()
        assert batch == {"approved": [third["id"]], "refused": {}}
        done = wait_status(viewer, run_id, "complete")
        assert done["stages"][0]["attempts"] >= 3

        arts = viewer.get(f"/runs/{run_id}/artifacts").json()["artifacts"]
        assert arts and all(a["team"] == "business-analysis" and a["sha256"] for a in arts)
        usage = viewer.get("/usage", params={"run": run_id}).json()
        assert usage["total"]["calls"] >= 3
        assert problem(viewer.get("/usage", params={"by": "colour"}), 422)["detail"]

        revised = operator.post(
            f"/runs/{run_id}/revisions", json={"from_team": "business-analysis", "feedback": "add rate limits"}
        )
        assert revised.status_code == 202, revised.text
        child = revised.json()
        assert child["parent_run_id"] == run_id and child["continued_by"] == "here"
        bad = operator.post(f"/runs/{run_id}/revisions", json={"from_team": "poets", "feedback": "x"})
        assert "poets" in problem(bad, 422)["detail"]
        [item] = wait_status(viewer, child["run_id"], "waiting_human")["escalations"]
        assert operator.post(f"/escalations/{item['id']}/approve", json={}).status_code == 200
        assert wait_status(viewer, child["run_id"], "complete")["run_id"] == child["run_id"]


def test_webhooks_are_managed_by_an_admin_and_notify_from_the_api_process(
    server: ApiServer, tokens: dict[str, str]
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from api.webhooks import verify_signature

    got: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append((dict(self.headers), self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    admin, operator = client(server, tokens["admin"]), client(server, tokens["operator"])
    try:
        hook = {"url": url, "events": ["escalation.opened"]}
        assert problem(operator.post("/webhooks", json=hook), 403)["detail"].startswith("token 'ci-bot'")
        assert "unknown" in problem(admin.post("/webhooks", json={**hook, "events": ["run.exploded"]}), 422)["detail"]
        made = admin.post("/webhooks", json=hook)
        assert made.status_code == 201, made.text
        secret, webhook_id = made.json()["secret"], made.json()["webhook"]["id"]
        assert [w["id"] for w in admin.get("/webhooks").json()] == [webhook_id]
        assert "secret" not in json.dumps(admin.get("/webhooks").json())

        run_id = operator.post("/runs", json={"requirement": REQ, "pipeline": "business-analysis"}).json()["run_id"]
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        [(headers, body)] = got
        assert verify_signature(secret, headers["Factory-Signature"], body) > 0
        assert headers["Factory-Event"] == "escalation.opened" and json.loads(body)["run_id"] == run_id
        [delivery] = admin.get("/webhooks/deliveries", params={"webhook": webhook_id}).json()
        assert delivery["status"] == "delivered" and delivery["id"] == headers["Factory-Delivery"]
        assert admin.post(f"/webhooks/{webhook_id}/test").json()["ok"] is True
        assert admin.delete(f"/webhooks/{webhook_id}").status_code == 204
        assert problem(admin.delete(f"/webhooks/{webhook_id}"), 404)["type"].endswith("webhook-not-found")
    finally:
        receiver.shutdown()


def test_decisions_made_as_their_escalations_are_announced_all_resume_their_runs(
    env: dict[str, str], tokens: dict[str, str]
) -> None:
    # The API process drives the run (no worker) and may still be letting go of it when the approval
    # comes: the run must be driven once more, not left waiting on nothing (nor for the next sweep).
    with api_server({**env, "FACTORY_SWEEP_S": "600"}) as server:
        approve_at_first_sight(client(server, tokens["operator"]))


def approve_at_first_sight(operator: httpx.Client) -> None:
    run_ids = []
    for n in range(6):
        run_id = operator.post("/runs", json={"requirement": f"{REQ} #{n}", "pipeline": "business-analysis"}).json()
        run_ids.append(run_id["run_id"])
        with operator.stream("GET", f"/runs/{run_ids[-1]}/events") as live:  # approved as its opening is announced
            for frame in sse_frames(live.iter_lines()):
                if frame["event"] == "escalation.opened":
                    opened = json.loads(frame["data"])["data"]["id"]
                    assert operator.post(f"/escalations/{opened}/approve", json={}).status_code == 200
                    break
    for run_id in run_ids:
        assert wait_status(operator, run_id, "complete", timeout_s=20)["status"] == "complete"


def test_runs_a_dead_worker_would_have_driven_are_driven_by_the_api_process(
    env: dict[str, str], tokens: dict[str, str]
) -> None:
    import signal
    import subprocess

    from tests.integration.cli import FACTORY

    env = {**env, "FACTORY_CONFIDENCE_FLOOR": "0", "FACTORY_SWEEP_S": "2"}
    with api_server(env) as server:
        operator = client(server, tokens["operator"])
        worker = subprocess.Popen(
            [FACTORY, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            assert worker.stderr is not None
            said = []
            while len(said) < 20 and not any("worker: drives" in line for line in said):  # it announced itself
                said.append(worker.stderr.readline())
            assert "worker: drives" in said[-1], said
            time.sleep(1.0)  # its first heartbeat
        finally:
            worker.send_signal(signal.SIGKILL)  # its heartbeat still says it is alive for a few seconds
            worker.wait(30)
            worker.stderr.close()  # type: ignore[union-attr]
        handed = operator.post("/runs", json={"requirement": REQ, "pipeline": "business-analysis"}).json()
        assert handed["continued_by"] == "worker"
        assert wait_status(operator, handed["run_id"], "complete", timeout_s=40)["status"] == "complete"

        queued = factory("run", REQ, "--pipeline", "business-analysis", "--detach", "--json", env=env)
        assert queued.returncode == 0, queued.stderr  # queued with no worker: the API's sweep drives it
        run_id = json.loads(queued.stdout)["run_id"]
        assert wait_status(operator, run_id, "complete", timeout_s=40)["status"] == "complete"
        assert any("is gone; this process drives it" in line for line in server.lines)
