"""The REST API under load: the attention list and decisions under 50 concurrent clients, live-event
latency over SSE, and webhook delivery throughput. Prints JSON.

    python -m bench.api [--clients 50] [--requests 40] [--runs 200] [--events 200] [--webhooks 300]

A real `factory api` process and a real `factory worker` (which continues the runs decided), on an
embedded PostgreSQL with pgvector, Redis under a prefix of its own, and the scripted model with zero
think time. ``--runs`` runs are submitted through the API and each waits on an approval (confidence
floor 0.95). Then:

- attention: every client (its own token and connection) reads ``GET /escalations`` (the summary
  and the 50 most urgent of the ``--runs`` open escalations) ``--requests`` times back to back (closed
  loop, zero think time), then again paced at 5 requests/s per client (at random moments);
- decisions: the clients approve half the waiting escalations, each one once, back to back; once the
  worker has driven those runs, the other half at random moments a second apart on average per
  client (the worker driving each run as it is approved);
- SSE: one client follows a run's events while this process emits ``--events`` events through the
  factory's own event stream (``RedisEventStream``) every 10 ms; latency is receipt minus the event's
  ``at`` (one clock);
- webhooks: a webhook to a local receiver that answers 200 at once; ``--webhooks`` events are emitted
  and delivered by the worker's dispatcher; throughput is deliveries per second from the first event
  to the last delivery.

Goals (issue 18): attention and decision p99 ≤ 50 ms; SSE p50 ≤ 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from redis import Redis

from bench.stats import pct
from factory import services

FACTORY = str(Path(sys.executable).with_name("factory"))
REQ = "Build a URL shortener service with an HTTP API: create short links, redirect, and count clicks."
_READY = re.compile(r"api: (http://\S+)/api/v1")


def figures(samples_ms: list[float]) -> dict[str, float | int]:
    if not samples_ms:
        return {"n": 0}
    return {
        "n": len(samples_ms),
        "p50_ms": round(pct(samples_ms, 0.5), 2),
        "p90_ms": round(pct(samples_ms, 0.9), 2),
        "p99_ms": round(pct(samples_ms, 0.99), 2),
        "max_ms": round(max(samples_ms), 2),
    }


@contextlib.contextmanager
def environment(tmp: Path) -> Iterator[dict[str, str]]:
    prefix = f"bench:api:{uuid.uuid4().hex[:10]}:"
    redis = "redis://127.0.0.1:6379/0"
    try:
        try:
            Redis.from_url(redis, socket_timeout=1).ping()
        except Exception:
            redis = services.start_redis(tmp, timeout_s=30)
        script = tmp / "script.json"
        script.write_text("{}")
        own = ("FACTORY_", "OPENAI_", "ANTHROPIC_", "OLLAMA_", "LANGFUSE_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        env |= {
            "FACTORY_DATA_DIR": str(tmp / "data"),
            "FACTORY_VERIFY": "false",  # the scripted placeholders are not what this measures
            "FACTORY_DATABASE_URL": services.start_postgres(tmp),
            "FACTORY_REDIS_URL": redis,
            "FACTORY_REDIS_PREFIX": prefix,
            "FACTORY_SCRIPTED_MODEL": str(script),
            "FACTORY_CONFIDENCE_FLOOR": "0.95",  # every stage asks for an approval
            "FACTORY_API_RATE_PER_S": "100000",  # the bench measures latency, not the limiter
            "FACTORY_API_RATE_BURST": "100000",
            "FACTORY_WORKER_POLL_S": "0.5",
            "FACTORY_WEBHOOK_BACKOFF_S": "0.2",
            "FACTORY_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        }
        yield env
    finally:
        with contextlib.suppress(Exception), contextlib.closing(Redis.from_url(redis)) as client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=500))
            if keys:
                client.delete(*keys)
        services.stop(tmp)


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([FACTORY, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"factory {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def process(env: dict[str, str], *args: str, ready: str, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `factory ARGS` process, once ``ready`` (a regex) appears in its output; stopped at the end."""
    out = log.open("wb")
    proc = subprocess.Popen([FACTORY, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(ready, log.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"factory {' '.join(args)} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc, found.group(1) if found.groups() else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


async def closed_loop(clients: list[aiohttp.ClientSession], path: str, requests: int, think_s: float) -> list[float]:
    """Each client GETs ``path`` ``requests`` times, one after the other (``think_s`` between)."""
    samples: list[float] = []

    async def one(client: aiohttp.ClientSession) -> None:
        for _ in range(requests):
            started = time.perf_counter()
            async with client.get(path) as got:
                await got.read()
                samples.append((time.perf_counter() - started) * 1000)
                if got.status != 200:
                    raise RuntimeError(f"GET {path}: {got.status} {(await got.text())[:200]}")
            if think_s:  # clients act at random moments, ``think_s`` apart on average
                await asyncio.sleep(random.uniform(0, 2 * think_s))

    await asyncio.gather(*(one(c) for c in clients))
    return samples


async def decisions(clients: list[aiohttp.ClientSession], ids: list[str], think_s: float = 0.0) -> list[float]:
    """The clients approve ``ids`` between them, each client one decision after the other (``think_s``
    between)."""
    samples: list[float] = []
    queue = list(ids)

    async def one(client: aiohttp.ClientSession) -> None:
        while queue:
            if think_s:  # clients act at random moments, ``think_s`` apart on average
                await asyncio.sleep(random.uniform(0, 2 * think_s))
                if not queue:
                    return
            escalation_id = queue.pop()
            started = time.perf_counter()
            async with client.post(f"escalations/{escalation_id}/approve", json={}) as got:
                await got.read()
                samples.append((time.perf_counter() - started) * 1000)
                if got.status != 200:
                    raise RuntimeError(f"approve {escalation_id}: {got.status} {(await got.text())[:200]}")

    await asyncio.gather(*(one(c) for c in clients))
    return samples


async def waiting_escalations(client: httpx.AsyncClient, runs: int, timeout_s: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        items = (await client.get("/escalations", params={"limit": 500})).json()["items"]
        if len(items) >= runs:
            return [i["id"] for i in items]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(items)} of {runs} runs waited on a human")
        await asyncio.sleep(0.5)


async def settled(client: httpx.AsyncClient, run_ids: list[str], timeout_s: float = 600) -> None:
    """Wait until no run of ``run_ids`` is still being driven (each complete or waiting on a human)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page = (await client.get("/runs", params={"status": "running", "limit": 200})).json()["runs"]
        if not {r["run_id"] for r in page} & set(run_ids):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the worker did not drive the approved runs in time")


async def sse_latency(env: dict[str, str], api: str, token: str, run_id: str, n: int) -> list[float]:
    from redis.asyncio import Redis as AsyncRedis

    from observability.base import Event
    from observability.redis_stream import RedisEventStream

    samples: list[float] = []
    connected = asyncio.Event()

    async def follow() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=60) as client:
            await client.get(f"/runs/{run_id}")  # the connection is made before the stream
            async with client.stream("GET", f"/runs/{run_id}/events") as stream:
                connected.set()
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        if event["type"] != "bench.tick":
                            continue
                        at = datetime.fromisoformat(event["at"])
                        samples.append((datetime.now(UTC) - at).total_seconds() * 1000)
                        if len(samples) >= n:
                            return

    redis = AsyncRedis.from_url(env["FACTORY_REDIS_URL"])
    stream = RedisEventStream(redis, prefix=env["FACTORY_REDIS_PREFIX"])
    follower = asyncio.create_task(follow())
    await connected.wait()
    await asyncio.sleep(1.0)  # the backlog of the run's own events is read first
    for i in range(n):
        await stream.emit(Event(type="bench.tick", run_id=run_id, data={"i": i}, at=datetime.now(UTC)))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(follower, 60)
    await stream.aclose()
    await redis.aclose()
    return samples


class _Receiver(BaseHTTPRequestHandler):
    received: list[float] = []

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        _Receiver.received.append(time.perf_counter())
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def webhook_throughput(env: dict[str, str], n: int) -> dict[str, Any]:
    from redis.asyncio import Redis as AsyncRedis

    from observability.base import Event
    from observability.redis_stream import RedisEventStream

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        cli(env, "webhooks", "add", url, "--events", "escalation.opened", "--json")
        await asyncio.sleep(2.0)  # the worker's dispatcher sees the new webhook
        redis = AsyncRedis.from_url(env["FACTORY_REDIS_URL"])
        stream = RedisEventStream(redis, prefix=env["FACTORY_REDIS_PREFIX"])
        _Receiver.received.clear()
        started = time.perf_counter()
        for i in range(n):
            data = {"escalation_id": f"esc-bench-{i}", "priority": "low", "team": "qa", "question": "bench?"}
            await stream.emit(Event(type="escalation.opened", run_id="run-bench", data=data, at=datetime.now(UTC)))
        await stream.aclose()
        await redis.aclose()
        deadline = time.monotonic() + 120
        while len(_Receiver.received) < n and time.monotonic() < deadline:  # noqa: ASYNC110  (another thread counts)
            await asyncio.sleep(0.05)
        got = len(_Receiver.received)
        took = (max(_Receiver.received) - started) if got else float("nan")
        return {"events": n, "delivered": got, "seconds": round(took, 3), "per_s": round(got / took, 1) if got else 0}
    finally:
        server.shutdown()


async def measure(env: dict[str, str], api: str, args: argparse.Namespace) -> dict[str, Any]:
    from psycopg_pool import AsyncConnectionPool

    from factory.tokens_pg import PostgresTokenStore
    from factory.wiring import CONNECTION_KWARGS

    async with AsyncConnectionPool(env["FACTORY_DATABASE_URL"], kwargs=CONNECTION_KWARGS, open=False) as pool:
        tokens = PostgresTokenStore(pool)
        made = [await tokens.create(f"bench-{i}", "operator") for i in range(args.clients)]
    clients = [
        httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {raw}"}, timeout=60) for _, raw in made
    ]
    # the load itself goes through aiohttp, whose client costs far less CPU per request than httpx's: on
    # two cores the client shares the machine with the server it measures
    loaders = [
        aiohttp.ClientSession(base_url=f"{api}/", headers={"Authorization": f"Bearer {raw}"},
                              connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=60))
        for _, raw in made
    ]  # fmt: skip
    try:
        body = {"pipeline": "business-analysis"}
        submitted = await asyncio.gather(
            *(
                clients[i % len(clients)].post("/runs", json={**body, "requirement": f"{REQ} #{i}"})
                for i in range(args.runs)
            )
        )
        bad = [r.text for r in submitted if r.status_code != 202]
        if bad:
            raise RuntimeError(f"submissions refused: {bad[:2]}")
        run_ids = [r.json()["run_id"] for r in submitted]
        ids = await waiting_escalations(clients[0], args.runs)
        await closed_loop(loaders, "escalations", 2, 0)  # warm-up: every connection made
        attention = await closed_loop(loaders, "escalations", args.requests, 0)
        paced = await closed_loop(loaders, "escalations", max(5, args.requests // 4), 0.2)
        half = args.runs // 2
        decided = await decisions(loaders, ids[:half])
        await settled(clients[0], run_ids)  # the worker has driven the runs approved so far
        decided_paced = await decisions(loaders, ids[half:], think_s=1.0)
        sse = await sse_latency(env, api, made[0][1], run_ids[-1], args.events)
        hooks = await webhook_throughput(env, args.webhooks) if args.webhooks else None
    finally:
        for client in clients:
            await client.aclose()
        for loader in loaders:
            await loader.close()
    result: dict[str, Any] = {
        "attention_list": {
            "open_escalations": len(ids),
            "closed_loop": figures(attention),
            "paced_5_per_s": figures(paced),
        },
        "decision": {"closed_loop": figures(decided), "paced_1_per_s": figures(decided_paced)},
        "sse_event_latency": figures(sse),
        "webhooks": hooks,
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="attention-list requests per client")
    parser.add_argument("--runs", type=int, default=200, help="runs waiting on an approval")
    parser.add_argument("--events", type=int, default=200, help="live events followed over SSE")
    parser.add_argument("--webhooks", type=int, default=300, help="events delivered to a webhook (0: skip)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as name:
        tmp = Path(name)
        with environment(tmp) as env:
            cli(env, "up", "--services-only")  # migrates the fresh database before two processes race to
            with (
                process(env, "worker", ready=r"(worker: drives)", log=tmp / "worker.log"),
                process(env, "api", "--port", "0", ready=r"api: (http://\S+)/api/v1", log=tmp / "api.log") as (_, url),
            ):
                figures_ = asyncio.run(measure(env, f"{url}/api/v1", args))
    attention = figures_["attention_list"]["closed_loop"]
    out = {
        "bench": "api",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "clients": args.clients,
        **figures_,
        "goals": {
            "attention_p99_le_50ms": attention.get("p99_ms", 1e9) <= 50,
            "decision_p99_le_50ms": figures_["decision"]["closed_loop"].get("p99_ms", 1e9) <= 50,
            "paced_attention_p99_le_50ms": figures_["attention_list"]["paced_5_per_s"].get("p99_ms", 1e9) <= 50,
            "paced_decision_p99_le_50ms": figures_["decision"]["paced_1_per_s"].get("p99_ms", 1e9) <= 50,
            "sse_p50_le_20ms": figures_["sse_event_latency"].get("p50_ms", 1e9) <= 20,
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
