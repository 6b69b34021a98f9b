"""The chat process's side of group chat on the real services (``chat.runtime``, no browser, no
worker): a session handed to ``nudge_session`` is driven in a task the runtime owns when no worker
is alive, and taken over when a worker announced itself but never took it up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from chat import runtime as runtime_module
from chat.runtime import Runtime
from factory.settings import Settings
from factory.worker import announce_worker, wake_key
from teams.groupchat import GroupChatOptions, SessionStatus

pytestmark = pytest.mark.integration

TEAMS = ["solution-architecture", "qa-engineering"]


@pytest.fixture
def settings(pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path) -> Settings:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"embeddings": "hashed", "latency_s": 0.1}))
    return Settings(
        data_dir=tmp_path / "data", database_url=SecretStr(pg_url), redis_url=SecretStr(redis_base_url),
        redis_prefix=redis_prefix, scripted_model=script, memory_extraction="structured",
    )  # fmt: skip


@pytest.fixture
async def chat(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime()
    rt.configure(settings)
    await rt.open()
    try:
        yield rt
    finally:
        await rt.close()


async def ended(rt: Runtime, session_id: str, timeout_s: float = 60.0) -> Any:
    for _ in range(int(timeout_s / 0.1)):
        session = await rt.chats.get(session_id)
        if session.status is not SessionStatus.RUNNING:
            return session
        await asyncio.sleep(0.1)
    raise AssertionError(f"group chat {session_id} did not end within {timeout_s} s")


async def test_with_no_worker_the_chat_drives_the_session_in_a_task_of_its_own(chat: Runtime) -> None:
    session = await chat.chats.open("Cache or not?", TEAMS, by="ana", options=GroupChatOptions(max_messages=2))
    assert await chat.nudge_session(session.id) == "chat"
    assert await chat.nudge_session(session.id) == "chat"  # nudged twice: still one driver
    done = await ended(chat, session.id)
    lines = await chat.chats.transcript(session.id)
    assert done.status is SessionStatus.ENDED and done.stop_reason == "max_messages"
    assert [e.kind for e in lines] == ["topic", "team", "team"] and done.summary is not None
    assert not chat.ops.drivers.active()  # the task is gone with the session's end


async def test_a_session_no_live_worker_takes_up_is_driven_by_the_chat(
    redis: Any, redis_prefix: str, chat: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime_module, "TAKEOVER_S", 0.5)
    await announce_worker(redis, redis_prefix, f"{redis_prefix}worker:silent", 60)  # announced, but it drives nothing
    session = await chat.chats.open("Queue or cron?", TEAMS, by="ana", options=GroupChatOptions(max_messages=1))
    assert await chat.nudge_session(session.id) == "worker"
    assert session.id.encode() in await redis.lrange(wake_key(redis_prefix), 0, -1)  # handed over first
    done = await ended(chat, session.id)
    assert done.status is SessionStatus.ENDED
    assert f"no worker took up group chat {session.id}" in caplog.text
    assert [e.kind for e in await chat.chats.transcript(session.id)] == ["topic", "team"]
