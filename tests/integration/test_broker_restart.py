"""A real redis-server SIGKILLed and restarted on the same port while a clarification is outstanding.

The request is answered after the restart (re-sent when Redis lost it or the connection broke),
or ends as a refusal; it never hangs and is never dropped without an outcome. Both kinds of
client are covered: the factory's (``Redis.from_url``: a lost connection reaches the broker at
once) and ``Redis()``'s default, which retries a lost command by itself, hiding the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff, ExponentialWithJitterBackoff

from broker.base import BrokerLimits, BrokerOutcome, ClarificationReply, ClarificationRequest, Refusal
from broker.redis_streams import RedisBroker
from factory import services
from teams.slugs import TeamSlug

pytestmark = pytest.mark.integration
TEAM: TeamSlug = "backend-engineering"
PREFIX = "restart:"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server this test owns: started, SIGKILLed and restarted on the same port and data dir."""

    folder: Path
    persistent: bool
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20) -> None:
        binary, _source = services.redis_binary()
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder),
             "--logfile", str(self.folder / "redis.log"), *durability],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not start on port {self.port}; see {self.folder / 'redis.log'}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path, persistent=request.param)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.asynccontextmanager
async def client(url: str, *, kind: str) -> AsyncIterator[Redis]:
    """``factory``: built as the composition root builds it (``from_url``: a lost connection surfaces
    at once); ``retrying``: ``Redis()``'s own default policy, which retries a lost command by itself
    for seconds; ``observer``: the test's own view, retrying quickly."""
    policy = {
        "factory": None,
        "retrying": Retry(ExponentialWithJitterBackoff(base=1, cap=10), 3),
        "observer": Retry(ConstantBackoff(0.05), 40),
    }[kind]
    redis = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, retry=policy)
    try:
        yield redis
    finally:
        await redis.aclose()


def ask(ident: str = "r1") -> ClarificationRequest:
    return ClarificationRequest(
        id=ident,
        run_id="run",
        objective_id="run:0",
        from_team="qa-engineering",
        target_team=TEAM,
        question="Is /health public?",
        hop_chain=["qa-engineering"],
        created_at=datetime.now(UTC),
    )


@dataclass
class Answerer:
    """Answers at once, unless ``hold`` is set: then its first answer waits for ``release``."""

    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)

    async def __call__(self, request: ClarificationRequest) -> ClarificationReply:
        self.calls.append(request.id)
        if self.hold and len(self.calls) == 1:
            await self.release.wait()
        return ClarificationReply(
            request_id=request.id, team=request.target_team, ok=True, answer="yes", answered_at=datetime.now(UTC)
        )


async def _until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out waiting for the test's precondition"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(broker: RedisBroker, answerer: Answerer) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(broker.serve(TEAM, answerer, consumer="c1", stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


LIMITS = BrokerLimits(reply_timeout_s=20, claim_idle_s=1.0, reconnect_attempts=8)
BOUND_S = LIMITS.reply_timeout_s + 5  # asyncio.wait_for around every request: a hang fails, never stalls
ASK = "r1"
variants = pytest.mark.parametrize(
    ("server", "kind"),
    [(True, "factory"), (True, "retrying"), (False, "factory"), (False, "retrying")],
    ids=["data-survives/factory-client", "data-survives/retrying-client", "data-lost/factory-client",
         "data-lost/retrying-client"],
    indirect=["server"],
)  # fmt: skip


async def _check(observer: RedisBroker, answerer: Answerer, outcome: BrokerOutcome, server: RedisServer) -> None:
    assert outcome.answered and outcome.reply is not None and outcome.reply.answer == "yes", outcome
    assert answerer.calls == [ASK]  # answered once, however many entries Redis ended up holding
    counters = await observer.counters()
    assert counters["replies"] == 1
    if server.persistent:
        assert counters["requests"] == 1  # a re-send is never counted against the cap twice


@variants
async def test_a_queued_request_outlives_a_redis_restart(server: RedisServer, kind: str) -> None:
    answerer = Answerer()
    async with client(server.url, kind=kind) as redis, client(server.url, kind="observer") as observing:
        broker = RedisBroker(redis, prefix=PREFIX, limits=LIMITS)
        observer = RedisBroker(observing, prefix=PREFIX, limits=LIMITS)
        asking = asyncio.create_task(asyncio.wait_for(broker.request(ask(ASK)), timeout=BOUND_S))
        await _until(lambda: _stream_len(observer, at_least=1))  # sent; no responder runs yet
        server.kill()
        server.start()
        if server.persistent and kind == "factory":
            # The asker saw its connection break and sends again, though Redis kept the request.
            await _until(lambda: _counted(observer, "resent"))
        async with serving(broker, answerer):
            outcome = await asking
        await _check(observer, answerer, outcome, server)
        counters = await observer.counters()
        if server.persistent and kind == "factory":
            assert counters["resent"] == 1 and counters["duplicates"] == 1  # both entries, answered once
        assert int(await observing.xlen(observer.stream(TEAM))) == 0  # and both gone from the stream
        if not server.persistent:
            assert counters["resent"] >= 1  # Redis forgot it: only the asker's re-send can have been answered


@variants
async def test_a_request_being_answered_outlives_a_redis_restart(server: RedisServer, kind: str) -> None:
    answerer = Answerer(hold=True)
    async with (
        client(server.url, kind=kind) as redis,
        client(server.url, kind=kind) as serve_redis,
        client(server.url, kind="observer") as observing,
    ):
        broker = RedisBroker(redis, prefix=PREFIX, limits=LIMITS)
        responder = RedisBroker(serve_redis, prefix=PREFIX, limits=LIMITS)
        observer = RedisBroker(observing, prefix=PREFIX, limits=LIMITS)
        async with serving(responder, answerer):
            asking = asyncio.create_task(asyncio.wait_for(broker.request(ask(ASK)), timeout=BOUND_S))
            await _until(lambda: _true(bool(answerer.calls)))  # the responder holds the request
            server.kill()
            server.start()
            if server.persistent and kind == "factory":
                await _until(lambda: _counted(observer, "resent"))
            answerer.release.set()
            outcome = await asking
            if server.persistent and kind == "factory":  # the re-sent entry is found answered and skipped
                await _until(lambda: _counted(observer, "duplicates"))
        await _check(observer, answerer, outcome, server)


@pytest.mark.parametrize("kind", ["factory", "retrying"])
@pytest.mark.parametrize("server", [False], ids=["data-lost"], indirect=True)
async def test_a_request_whose_redis_stays_down_ends_as_a_refusal_in_time(server: RedisServer, kind: str) -> None:
    limits = BrokerLimits(reply_timeout_s=3, claim_idle_s=1.0)
    async with client(server.url, kind=kind) as redis, client(server.url, kind="observer") as observing:
        broker = RedisBroker(redis, prefix=PREFIX, limits=limits)
        observer = RedisBroker(observing, prefix=PREFIX, limits=limits)
        started = time.monotonic()
        asking = asyncio.create_task(asyncio.wait_for(broker.request(ask()), timeout=limits.reply_timeout_s + 10))
        await _until(lambda: _stream_len(observer, at_least=1))
        server.kill()  # and never restarted
        outcome = await asking
        elapsed = time.monotonic() - started
    assert outcome.refusal in (Refusal.UNAVAILABLE, Refusal.TIMEOUT) and not outcome.answered
    assert elapsed < limits.reply_timeout_s + 1.5, elapsed


async def _true(value: bool) -> bool:
    return value


async def _counted(broker: RedisBroker, name: str) -> bool:
    return bool((await broker.counters()).get(name))


async def _stream_len(observer: RedisBroker, *, at_least: int) -> bool:
    return int(await observer._redis.xlen(observer.stream(TEAM))) >= at_least
