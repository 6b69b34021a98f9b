"""`factory worker` drives group-chat sessions (issue 17, item 3): one handed over by a wake-up naming
its id, one left running with nobody driving it (found by the worker's poll), one whose worker was
SIGKILLed mid-discussion (a second worker resumes it, no message lost or repeated), and one whose
worker was stopped (SIGTERM: it exits at once, the lease let go, the session resumable). Real
PostgreSQL and Redis, the scripted model through the factory's routing, real worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from factory.worker import wake_workers
from teams.groupchat import ChatEntry, GroupChatOptions, GroupChats, SessionStatus
from tests.conftest import write_script
from tests.integration.cli import FACTORY
from tests.integration.groupchat_driver import chats_of

pytestmark = pytest.mark.integration

A, B, C = "solution-architecture", "security-engineering", "qa-engineering"
TOPIC = "Should the shortener ship on Friday?"


@pytest.fixture
def worker_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FACTORY_WORKER_POLL_S": "0.5", "FACTORY_LOG_FORMAT": "json", "FACTORY_LOG_LEVEL": "INFO"}


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([FACTORY, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            start_new_session=True)  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def until_ended(
    chats: GroupChats, session_id: str, procs: list[subprocess.Popen[bytes]], timeout_s: float
) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if (await chats.get(session_id)).status is SessionStatus.ENDED:
            return
        assert all(p.poll() is None for p in procs), "a worker exited"
        await asyncio.sleep(0.1)
    raise AssertionError(f"{session_id} did not end in {timeout_s}s")


async def until_team_lines(chats: GroupChats, session_id: str, count: int, timeout_s: float = 90) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if sum(e.kind == "team" for e in await chats.transcript(session_id)) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} team messages never came")


def whole(lines: list[ChatEntry], messages: int) -> None:
    """One topic line, then ``messages`` team messages, numbered without a gap, none repeated."""
    assert [e.seq for e in lines] == list(range(len(lines)))
    assert [e.kind for e in lines] == ["topic"] + ["team"] * messages
    texts = [e.text for e in lines if e.kind == "team"]
    assert len(set(texts)) == len(texts) == messages


def logged(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def test_a_worker_drives_a_session_handed_over_and_one_nobody_drives(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    write_script(worker_env, {"embeddings": "hashed"})
    log = tmp_path / "worker.log"
    async with chats_of(worker_env) as (chats, factory):
        handed = await chats.open(TOPIC, [A, B, C], by="ana", options=GroupChatOptions(max_messages=4))
        left = await chats.open(TOPIC, [A, B], by="bo", options=GroupChatOptions(max_messages=3))
        worker = start_worker(worker_env, log)
        try:
            await wake_workers(factory.redis, worker_env["FACTORY_REDIS_PREFIX"], handed.id)
            await until_ended(chats, handed.id, [worker], 90)
            await until_ended(chats, left.id, [worker], 60)  # found by the poll once past its opener's grace
        finally:
            stop_process(worker)
        assert worker.returncode == 0
        for session, messages in ((handed, 4), (left, 3)):
            ended = await chats.get(session.id)
            assert ended.stop_reason == "max_messages" and ended.summary is not None and ended.team_messages == messages
            whole(await chats.transcript(session.id), messages)
            assert session.id not in await chats.orphaned()
    drove = [e for e in logged(log) if "drove group chat" in str(e.get("message", ""))]
    assert {e["run_id"] for e in drove} == {handed.id, left.id}


async def test_a_worker_killed_mid_session_leaves_it_to_another_with_no_message_lost_or_repeated(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    write_script(worker_env, {"embeddings": "hashed", "latency_s": 0.4})
    async with chats_of(worker_env) as (chats, factory):
        session = await chats.open(TOPIC, [A, B, C], by="ana", options=GroupChatOptions(max_messages=7))
        first = start_worker(worker_env, tmp_path / "first.log")
        try:
            await wake_workers(factory.redis, worker_env["FACTORY_REDIS_PREFIX"], session.id)
            await until_team_lines(chats, session.id, 3)
            await asyncio.sleep(0.2)  # inside the next speaker's model call
            stop_process(first, signal.SIGKILL)
        finally:
            stop_process(first, signal.SIGKILL)
        before = await chats.transcript(session.id)
        assert (await chats.get(session.id)).status is SessionStatus.RUNNING
        assert session.id in await chats.orphaned()  # its driver is gone: nobody holds it

        second = start_worker(worker_env, tmp_path / "second.log")
        try:
            await until_ended(chats, session.id, [second], 120)
        finally:
            stop_process(second)
        lines = await chats.transcript(session.id)
        ended = await chats.get(session.id)
    assert ended.stop_reason == "max_messages" and ended.team_messages == 7
    whole(lines, 7)
    assert [e.model_dump() for e in lines[: len(before)]] == [e.model_dump() for e in before]
    assert [e.source for e in lines if e.kind == "team"] == [A, B, C, A, B, C, A]  # round-robin went on


async def test_a_stopped_worker_lets_its_session_go_at_once(worker_env: dict[str, str], tmp_path: Path) -> None:
    write_script(worker_env, {"embeddings": "hashed", "latency_s": 0.4})
    async with chats_of(worker_env) as (chats, factory):
        session = await chats.open(TOPIC, [A, B], by="ana", options=GroupChatOptions(max_messages=50))
        worker = start_worker(worker_env, tmp_path / "worker.log")
        try:
            await wake_workers(factory.redis, worker_env["FACTORY_REDIS_PREFIX"], session.id)
            await until_team_lines(chats, session.id, 1)
            loop = asyncio.get_running_loop()
            began = loop.time()
            os.killpg(worker.pid, signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 30)
            took = loop.time() - began
        finally:
            stop_process(worker, signal.SIGKILL)
        assert worker.returncode == 0 and took < 10
        stopped = await chats.get(session.id)
        assert stopped.status is SessionStatus.RUNNING and stopped.stop_reason is None
        assert session.id in await chats.orphaned()
        async with factory.pool.connection() as conn:
            cur = await conn.execute("SELECT expires_at <= now() FROM run_leases WHERE run_id = %s", (session.id,))
            assert await cur.fetchone() == (True,)  # let go at once, not left to expire
        write_script(worker_env, {"embeddings": "hashed"})
        resumed = await chats.resume(session.id)
        lines = await chats.transcript(session.id)
    assert resumed.stop_reason == "max_messages" and resumed.team_messages == 50
    whole(lines, 50)
