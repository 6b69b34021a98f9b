"""Scaling out: 50 concurrent Phase-1 runs on 1 and on 2 `factory worker` processes, directly and
through PgBouncer in transaction mode; and what tracing costs a stage. Prints JSON.

    python -m bench.scale [--runs 50] [--worker-runs 4] [--repeat 5] [--trace-runs 40] [--minilm] [--no-pgbouncer]

Each configuration starts its workers (real processes, the scripted model with zero think time and,
for memory, hashed embeddings instead of MiniLM inference; ``--minilm`` adds the same with the real
embedding model; embedded PostgreSQL with pgvector and embedded Redis), waits until they announce
themselves, then queues the runs back to back (``engine.submit`` and a wake-up each, as
`factory run --detach` does) and times until the last one completes (after an untimed warm-up run
per worker slot). Throughput is runs per second from the first submit to the last completion; 1
worker and 2 alternate ``--repeat`` times, and the ratio is of their medians, measured in the same
bench run. Every run is then checked: each stage complete, and the gate advanced exactly one
execution per stage (none ran twice to completion). Beside each figure, the CPU each part of the
machine spent per run (the workers, PostgreSQL, Redis, PgBouncer, this process): on 2 cores the
ratio is bounded by what the workers share with PostgreSQL.

Tracing: the same Phase-1 run, driven in this process, alternately with Langfuse tracing on
(exporting to a local OTLP/HTTP sink that only counts what it receives) and off; the overhead is
the ratio of median wall time per stage.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr
from redis import Redis

from factory import services
from factory.settings import Settings
from factory.wiring import Factory, open_factory
from factory.worker import wake_workers, workers_alive
from routing.scripted import ScriptedModel

REQ = "Build a URL shortener service with an HTTP API: create short links, redirect, and count clicks."
FACTORY = str(Path(sys.executable).with_name("factory"))


def _env(base: dict[str, str], database_url: str, redis_url: str, prefix: str, script: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "LANGFUSE_", "OPENAI_", "OLLAMA_"))}
    return {
        **env,
        **base,
        "FACTORY_VERIFY": "false",  # orchestration is measured; the scripted placeholders are not code
        "FACTORY_DATABASE_URL": database_url,
        "FACTORY_REDIS_URL": redis_url,
        "FACTORY_REDIS_PREFIX": prefix,
        "FACTORY_SCRIPTED_MODEL": str(script),
        "FACTORY_CONFIDENCE_FLOOR": "0",
    }


async def _wait_workers(redis_url: str, prefix: str, n: int, timeout_s: float = 120) -> None:
    from redis.asyncio import Redis as AsyncRedis

    client = AsyncRedis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while len(await workers_alive(client, prefix)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers did not start in {timeout_s:g}s")
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(workers: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of every live process, by part: the workers, PostgreSQL
    (every server on the machine; the bench's embedded one does the work), Redis, PgBouncer and this
    bench process (which queues and polls)."""
    parts: dict[str, float] = {"workers": 0.0, "postgres": 0.0, "redis": 0.0, "pgbouncer": 0.0, "bench": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        if pid in workers:
            part = "workers"
        elif pid == os.getpid():
            part = "bench"
        elif comm.startswith("redis-server"):
            part = "redis"
        elif comm in ("postgres", "pgbouncer"):
            part = comm
        else:
            continue
        parts[part] += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        if part == "postgres":  # and its children that ended (autovacuum workers, backends): the postmaster's
            parts[part] += (int(fields[13]) + int(fields[14])) / _TICK  # cutime, cstime
    return parts


def _check(database_url: str, run_ids: list[str]) -> dict[str, int]:
    """Runs complete, stages complete, and executions the gate advanced per stage."""
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=None) as conn:
        runs = conn.execute("SELECT status, count(*) FROM runs WHERE id = ANY(%s) GROUP BY 1", (run_ids,)).fetchall()
        stages = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'complete'), count(*) FROM stages WHERE run_id = ANY(%s)",
            (run_ids,),
        ).fetchone()
        advanced = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM audit_entries WHERE kind = 'stage.execution' AND run_id = ANY(%s)"
            " AND payload::jsonb -> 'gate' ->> 'verdict' = 'advance'"
            " GROUP BY run_id, payload::jsonb ->> 'stage' HAVING count(*) > 1) AS twice",
            (run_ids,),
        ).fetchone()
    assert stages is not None and advanced is not None
    by_status: dict[str, int] = {str(s): int(n) for s, n in runs}
    return {
        "runs_complete": int(by_status.get("complete", 0)),
        "runs_not_complete": int(sum(n for s, n in by_status.items() if s != "complete")),
        "stages_failed_or_unfinished": int(stages[1] - stages[0]),
        "stages_completed_twice": int(advanced[0]),
    }


async def _queue_and_wait(factory: Factory, prefix: str, runs: int, tag: str) -> tuple[list[str], float]:
    """Queue ``runs`` Phase-1 runs back to back, each waking the workers as the front doors do
    (`factory run --detach`, the API): they start on the first while the rest are still being
    submitted. Wait until none is running: (ids, submit time)."""
    started = time.perf_counter()
    ids = []
    for _ in range(runs):
        ids.append((await factory.engine.submit(REQ, "phase1")).id)
        await wake_workers(factory.redis, prefix, ids[-1])
    submitted = time.perf_counter() - started
    deadline = time.monotonic() + 600
    while True:
        async with factory.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM runs WHERE id = ANY(%s) AND status <> 'running'", (ids,))
            row = await cur.fetchone()
        if row is not None and row[0] == len(ids):
            return ids, submitted
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tag}: runs did not finish in 600 s")
        await asyncio.sleep(0.05)


async def _scale(
    settings: Settings,
    database_url: str,
    redis_url: str,
    workers: int,
    runs: int,
    worker_runs: int,
    tag: str,
    embeddings: str = "hashed",
) -> dict[str, Any]:
    prefix = f"bench:scale:{tag}:{os.getpid()}:"
    script = settings.data_dir / f"script-{tag}.json"
    script.write_text(json.dumps({"embeddings": "hashed"} if embeddings == "hashed" else {}))
    # Each worker's local models (MiniLM, with --minilm) get their share of the cores, as README says.
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = _env({"FACTORY_WORKER_RUNS": str(worker_runs), "FACTORY_WORKER_POLL_S": "0.5",
                "FACTORY_LOCAL_MODEL_THREADS": str(threads), "FACTORY_DATA_DIR": str(settings.data_dir)},
               database_url, redis_url, prefix, script)  # fmt: skip
    procs = [
        subprocess.Popen(  # noqa: ASYNC220  (started once, before the clock)
            [FACTORY, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )  # fmt: skip
        for _ in range(workers)
    ]
    try:
        await _wait_workers(redis_url, prefix, workers)
        local = settings.model_copy(  # the runs record the scripted routing their workers then follow
            update={
                "redis_prefix": prefix,
                "database_url": SecretStr(database_url),
                "redis_url": SecretStr(redis_url),
                "scripted_model": script,
            }  # fmt: skip
        )
        async with open_factory(local) as factory:
            # Warm-up: a run for every slot of every worker (first calls load what they load), untimed.
            await _queue_and_wait(factory, prefix, workers * worker_runs, tag)
            pids = [proc.pid for proc in procs]
            cpu_before = _cpu_seconds(pids)
            started = time.perf_counter()
            ids, submitted = await _queue_and_wait(factory, prefix, runs, tag)
            elapsed = time.perf_counter() - started
            cpu_after = _cpu_seconds(pids)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        client = Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
    return {
        "workers": workers,
        "runs": runs,
        "stages": runs * 5,
        "submit_s": round(submitted, 3),
        "elapsed_s": round(elapsed, 3),
        "runs_per_s": round(runs / elapsed, 3),
        "stages_per_s": round(runs * 5 / elapsed, 2),
        "cpu_ms_per_run": {k: round((cpu_after[k] - cpu_before[k]) * 1000 / runs, 1) for k in cpu_after},
        **_check(database_url, ids),
    }


async def _pair(
    settings: Settings,
    database_url: str,
    tag: str,
    embeddings: str = "hashed",
    *,
    redis_url: str,
    runs: int,
    worker_runs: int,
    repeat: int,
) -> dict[str, Any]:
    """1 worker, then 2, ``repeat`` times over (alternating, so drift hits both alike): the median
    throughput of each, their ratio, and every attempt's checks (failed or doubled stages summed)."""
    attempts: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for i in range(repeat):
        for workers in (1, 2):
            attempts[workers].append(
                await _scale(
                    settings, database_url, redis_url, workers, runs, worker_runs, f"{tag}{workers}-{i}", embeddings
                )
            )
    summary: dict[str, Any] = {}
    for workers, name in ((1, "one_worker"), (2, "two_workers")):
        done = attempts[workers]
        summary[name] = {
            "runs_per_s_median": round(statistics.median(a["runs_per_s"] for a in done), 3),
            "runs_per_s_each": [a["runs_per_s"] for a in done],
            "submit_s_each": [a["submit_s"] for a in done],
            "stages_per_s_median": round(statistics.median(a["stages_per_s"] for a in done), 2),
            "cpu_ms_per_run_median": {
                part: round(statistics.median(a["cpu_ms_per_run"][part] for a in done), 1)
                for part in done[0]["cpu_ms_per_run"]
            },
            **{k: sum(a[k] for a in done) for k in CHECKS},
        }
    summary["throughput_ratio"] = round(
        summary["two_workers"]["runs_per_s_median"] / summary["one_worker"]["runs_per_s_median"], 3
    )
    return {"runs": runs, "worker_runs": worker_runs, "repeats": repeat, **summary}


CHECKS = ("runs_complete", "runs_not_complete", "stages_failed_or_unfinished", "stages_completed_twice")


class _HashedEmbedder:
    """Zero think time for embeddings too: the scripted model's hashed vectors."""

    async def embed(self, texts: list[str], *, timeout_s: float) -> list[list[float]]:
        return ScriptedModel.embed(texts)


_HASHED = _HashedEmbedder()


class _Sink(BaseHTTPRequestHandler):
    """A local OTLP/HTTP endpoint that accepts and counts what the tracer exports."""

    received = 0

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def _otlp_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def _stage_ms(factory: Factory) -> list[float]:
    outcome = await factory.engine.start(REQ, "phase1")
    return [t.wall_s * 1000 for t in outcome.timings]


async def _tracing(settings: Settings, runs: int) -> dict[str, Any]:
    with _otlp_sink() as url:
        keys = {"langfuse_public_key": SecretStr("pk-lf-bench"), "langfuse_secret_key": SecretStr("sk-lf-bench")}
        traced = settings.model_copy(update={**keys, "langfuse_base_url": url})
        async with (
            open_factory(settings, model=ScriptedModel({}), embedder=_HASHED) as plain,
            open_factory(traced, model=ScriptedModel({}), embedder=_HASHED) as tracing,
        ):
            await _stage_ms(plain)  # warm-up: first calls, pools
            await _stage_ms(tracing)
            on: list[float] = []
            off: list[float] = []
            for _ in range(runs):  # alternating, so drift hits both alike
                off += await _stage_ms(plain)
                on += await _stage_ms(tracing)
        exported = _Sink.received
    return {
        "runs_each": runs,
        "stages_each": len(off),
        "per_stage_ms_off": round(statistics.median(off), 3),
        "per_stage_ms_on": round(statistics.median(on), 3),
        "on_over_off": round(statistics.median(on) / statistics.median(off), 3),
        "export_requests_received": exported,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--worker-runs", type=int, default=4, help="runs one worker drives at once")
    parser.add_argument("--trace-runs", type=int, default=40)
    parser.add_argument("--tracing-only", action="store_true", help="only the tracing on/off figure")
    parser.add_argument("--repeat", type=int, default=5, help="1-then-2-worker measurements per configuration")
    parser.add_argument("--no-pgbouncer", action="store_true")
    parser.add_argument("--minilm", action="store_true", help="also with real embeddings (CPU inference per stage)")
    args = parser.parse_args()
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        endpoints = services.ensure(data, None, None, timeout_s=120)
        settings = Settings(
            data_dir=data, database_url=None, redis_url=None, scripted_model=None, confidence_floor=0.0, verify=False
        )
        try:
            if not args.tracing_only:
                pair = functools.partial(_pair, settings, redis_url=endpoints.redis_url, runs=args.runs,
                                         worker_runs=args.worker_runs, repeat=args.repeat)  # fmt: skip
                report["direct"] = await pair(endpoints.database_url, "direct")
                if args.minilm:  # the same with real embeddings (all-MiniLM-L6-v2 on the CPU) in every stage
                    report["direct_with_minilm_embeddings"] = await pair(endpoints.database_url, "minilm", "minilm")
                if not args.no_pgbouncer:
                    from tests.integration.pgbouncer import running_pgbouncer

                    with running_pgbouncer(endpoints.database_url, pool_size=10) as bouncer:
                        report["through_pgbouncer"] = await pair(bouncer.url(endpoints.database_url), "bounced")
            report["tracing"] = await _tracing(settings, args.trace_runs)
        finally:
            services.stop(data)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
