"""Group chat across processes: a session driven by a process of its own
(``tests/integration/groupchat_driver.py``) is joined, stopped and — after SIGKILL — resumed from
here, through PostgreSQL (saved state, the lease, queued interjections) on the real services, also
through PgBouncer in transaction mode (as compose.yaml deploys it: no session state survives)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

from factory.errors import RunBusy
from factory.wiring import group_chats, open_factory
from teams.groupchat import GroupChatOptions, GroupChats, SessionStatus
from tests.conftest import REPO, write_script
from tests.integration.groupchat_driver import chats_of, settings_of
from tests.integration.pgbouncer import PgBouncer
from tests.integration.test_groupchat import Spy

pytestmark = pytest.mark.integration

A, B, C = "solution-architecture", "security-engineering", "qa-engineering"
TOPIC = "Should the shortener ship on Friday?"


@pytest.fixture(params=["direct", "pgbouncer"])
def reached(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """The environment, its database reached directly or through PgBouncer (transaction mode)."""
    if request.param == "direct":
        return env
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    return {**env, "FACTORY_DATABASE_URL": bouncer.url(env["FACTORY_DATABASE_URL"])}


def driver(env: dict[str, str], session_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.groupchat_driver", session_id],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def until(chats: GroupChats, session_id: str, team_lines: int, timeout_s: float = 90) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if sum(e.kind == "team" for e in await chats.transcript(session_id)) >= team_lines:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{team_lines} team messages never came")


async def test_a_session_killed_mid_discussion_resumes_elsewhere_with_no_message_lost_or_repeated(
    reached: dict[str, str],
) -> None:
    env = reached
    write_script(env, {"embeddings": "hashed", "latency_s": 0.4})
    async with chats_of(env) as (chats, _):
        session = await chats.open(TOPIC, [A, B, C], by="ana", options=GroupChatOptions(max_messages=8))
        proc = driver(env, session.id)
        try:
            await until(chats, session.id, 4)
            await asyncio.sleep(0.2)  # inside the next speaker's model call
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        before = await chats.transcript(session.id)
        killed = await chats.get(session.id)
        assert killed.status is SessionStatus.RUNNING and killed.stop_reason is None
        assert session.id in await chats.orphaned()

    write_script(env, {"embeddings": "hashed"})  # the resuming process needs no delay
    async with open_factory(settings_of(env)) as factory:
        spy = Spy(factory.model)
        chats = group_chats(factory, model=spy)
        ended = await chats.resume(session.id)  # the dead driver's lease goes at once
        lines = await chats.transcript(session.id)
        state = await chats.deps.store.state(session.id)
    assert ended.status is SessionStatus.ENDED and ended.stop_reason == "max_messages" and ended.team_messages == 8
    assert [e.seq for e in lines] == list(range(len(lines))) == list(range(ended.entries))
    assert [e.model_dump() for e in lines[: len(before)]] == [e.model_dump() for e in before]  # kept as they were
    team_lines = [e for e in lines if e.kind == "team"]
    assert len({e.text for e in team_lines}) == len(team_lines) == 8  # none repeated
    # The resumed process continued the saved conversation: round-robin went on after the last
    # stored speaker (the selector reads the restored thread), not from the first team again.
    assert [e.source for e in team_lines] == [A, B, C, A, B, C, A, B]
    assert state is not None and len(state["agent_states"]) == 4  # three teams and the manager
    resumed = next(r for r in spy.requests if r.purpose == "groupchat")
    heard = "\n".join(m.content for m in resumed.messages)
    assert all(e.text in heard for e in before if e.kind == "team")  # its restored context


async def test_the_operator_interjects_and_stops_a_session_driven_by_another_process(reached: dict[str, str]) -> None:
    env = reached
    write_script(env, {"embeddings": "hashed", "latency_s": 0.3})
    async with chats_of(env) as (chats, _):
        session = await chats.open(TOPIC, [A, B], by="ana", options=GroupChatOptions(max_messages=200))
        proc = driver(env, session.id)
        try:
            await until(chats, session.id, 1)
            with pytest.raises(RunBusy, match="being driven by another process"):
                await chats.drive(session.id)
            queued = await chats.interject(session.id, "Hold on: the legal review is not done.", by="bo")
            for _ in range(600):
                lines = await chats.transcript(session.id)
                if any(e.kind == "operator" for e in lines) and lines[-1].kind == "team":
                    break
                await asyncio.sleep(0.05)
            assert await chats.stop(session.id, by="ana")
            out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == 0, err
        assert out.strip() == "stopped"
        ended = await chats.get(session.id)
        lines = await chats.transcript(session.id)
    operator = next(e for e in lines if e.kind == "operator")
    assert (operator.source, operator.text, operator.meta) == ("bo", queued.text, {"interjection": queued.id})
    assert lines[operator.seq + 1].kind == "team"
    assert ended.status is SessionStatus.ENDED and ended.stop_reason == "stopped" and ended.stop_requested_by == "ana"
    assert ended.team_messages < 200 and ended.summary is not None
    assert json.loads(ended.model_dump_json())["stop_reason"] == "stopped"
