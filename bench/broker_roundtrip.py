"""Clarification round trip on Redis: broker vs a bare redis-py baseline, and throughput. Prints JSON.

- latency: one request at a time, an instant responder in the same process; p50/p99 in ms;
- baseline: the same exchange done by hand (XADD → XREADGROUP → LPUSH reply + XACK → BLPOP);
- throughput: 4 responder processes, many concurrent askers; clarifications answered per second.

Redis: FACTORY_REDIS_URL if set, else the machine's 127.0.0.1:6379 (DB 13), else an embedded one.

    python bench/broker_roundtrip.py [--requests 2000] [--throughput-requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from broker.base import BrokerLimits, ClarificationReply, ClarificationRequest
from broker.redis_streams import RedisBroker
from factory import services

LIMITS = BrokerLimits(max_per_objective=10**9, reply_timeout_s=30.0, claim_idle_s=30.0)


def _request(i: int, objective: str = "bench:0") -> ClarificationRequest:
    return ClarificationRequest(
        id=f"{objective}:{i}",
        run_id="bench",
        objective_id=objective,
        from_team="qa-engineering",
        target_team="backend-engineering",
        question="Is /health public?",
        hop_chain=["qa-engineering"],
        created_at=datetime.now(UTC),
    )


async def instant(request: ClarificationRequest) -> ClarificationReply:
    return ClarificationReply(
        request_id=request.id, team=request.target_team, ok=True, answer="yes", answered_at=datetime.now(UTC)
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(statistics.median(samples_ms), 3),
        "p99_ms": round(pct(samples_ms, 0.99), 3),
    }


async def broker_latency(url: str, prefix: str, n: int) -> list[float]:
    redis = Redis.from_url(url)
    broker = RedisBroker(redis, prefix=prefix, limits=LIMITS)
    stop = asyncio.Event()
    server = asyncio.create_task(broker.serve("backend-engineering", instant, consumer="bench", stop=stop))
    samples = []
    for i in range(n + 50):
        started = time.perf_counter()
        outcome = await broker.request(_request(i))
        elapsed = (time.perf_counter() - started) * 1000
        assert outcome.answered, outcome
        if i >= 50:  # warm-up
            samples.append(elapsed)
    stop.set()
    await server
    await redis.aclose()
    return samples


async def baseline_latency(url: str, prefix: str, n: int) -> list[float]:
    """The same exchange by hand, with no limits, no idempotency and no validation."""
    asker, responder = Redis.from_url(url), Redis.from_url(url)
    stream = f"{prefix}baseline"
    await responder.xgroup_create(stream, "g", id="0", mkstream=True)
    stop = asyncio.Event()

    async def serve() -> None:
        while not stop.is_set():
            read = await responder.xreadgroup("g", "c", {stream: ">"}, count=16, block=100)
            for _, entries in read:
                for entry_id, fields in entries:
                    key = f"{prefix}reply:{fields[b'id'].decode()}"
                    pipe = responder.pipeline(transaction=False)
                    pipe.lpush(key, b"yes")
                    pipe.expire(key, 600)
                    pipe.xack(stream, "g", entry_id)
                    await pipe.execute()

    server = asyncio.create_task(serve())
    samples = []
    for i in range(n + 50):
        started = time.perf_counter()
        await asker.xadd(stream, {"id": str(i), "request": _request(i).model_dump_json()})
        await asker.blpop([f"{prefix}reply:{i}"], timeout=5)  # type: ignore[misc]
        elapsed = (time.perf_counter() - started) * 1000
        if i >= 50:
            samples.append(elapsed)
    stop.set()
    await server
    await asker.aclose()
    await responder.aclose()
    return samples


def _responder_process(url: str, prefix: str, seconds: float, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    async def go() -> None:
        redis = Redis.from_url(url)
        broker = RedisBroker(redis, prefix=prefix, limits=LIMITS)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        task = asyncio.create_task(broker.serve("backend-engineering", instant, consumer=f"p{os.getpid()}", stop=stop))
        ready.set()  # type: ignore[attr-defined]
        await task
        await redis.aclose()

    asyncio.run(go())


async def throughput(url: str, prefix: str, total: int, processes: int = 4, concurrency: int = 256) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    events = [ctx.Event() for _ in range(processes)]
    procs = [ctx.Process(target=_responder_process, args=(url, prefix, 120.0, e)) for e in events]
    for p in procs:
        p.start()
    for e in events:
        e.wait(60)
    redis = Redis.from_url(url, max_connections=concurrency + 8)
    broker = RedisBroker(redis, prefix=prefix, limits=LIMITS)
    queue = iter(range(total))
    answered = 0

    async def asker() -> None:
        nonlocal answered
        for i in queue:
            outcome = await broker.request(_request(i, objective="bench:tp"))
            answered += outcome.answered

    started = time.perf_counter()
    await asyncio.gather(*(asker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    counters = await broker.counters()
    await redis.aclose()
    for p in procs:
        p.terminate()
        p.join()
    return {
        "responder_processes": processes,
        "concurrent_askers": concurrency,
        "answered": answered,
        "seconds": round(elapsed, 3),
        "per_second": round(answered / elapsed, 1),
        "duplicates": counters.get("duplicates", 0),
    }


def _redis_url(tmp: Path) -> str:
    if os.environ.get("FACTORY_REDIS_URL"):
        return os.environ["FACTORY_REDIS_URL"]
    with socket.socket() as probe:
        probe.settimeout(0.3)
        if probe.connect_ex(("127.0.0.1", 6379)) == 0:
            return "redis://127.0.0.1:6379/13"
    return services.start_redis(tmp, timeout_s=30)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--throughput-requests", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = _redis_url(Path(tmp))
        prefix = f"bench:{uuid.uuid4().hex[:8]}:"
        try:
            base = summary(await baseline_latency(url, prefix, args.requests))
            ours = summary(await broker_latency(url, prefix, args.requests))
            rate = await throughput(url, prefix, args.throughput_requests)
        finally:
            cleanup = Redis.from_url(url)
            keys = [k async for k in cleanup.scan_iter(match=f"{prefix}*")]
            for start in range(0, len(keys), 1000):
                await cleanup.delete(*keys[start : start + 1000])
            await cleanup.aclose()
            services.stop(Path(tmp))
    report = {
        "redis": url.split("@")[-1],
        "broker_roundtrip": ours,
        "baseline_roundtrip": base,
        "broker_over_baseline_p50": round(ours["p50_ms"] / base["p50_ms"], 3),
        "throughput": rate,
        "goals": {"p50_ms": 2.0, "p99_ms": 10.0, "ratio": 2.0, "per_second": 2000},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
