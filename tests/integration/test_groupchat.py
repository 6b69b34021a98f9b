"""Group chat on the real services: the factory's model chain (routing, budgets, usage ledger) with
the scripted model, PostgreSQL (sessions, transcript, saved state, memory, audit) and Redis (live
events). Selector answers are scripted under ``purposes.groupchat_select``; a selector with no
answer left says something that names no team, so round-robin decides."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from factory.errors import InputError, RunNotFound, UnknownTeam
from factory.settings import Settings
from factory.wiring import Factory, group_chats, open_factory
from memory.base import SHARED_BANK, MemoryKind
from routing.base import ChatRequest, ChatResponse
from teams.groupchat import ChatEntry, GroupChatOptions, GroupChats, SessionStatus
from teams.roster import team

pytestmark = pytest.mark.integration

A, B, C = "solution-architecture", "security-engineering", "qa-engineering"
TOPIC = "Monolith or services for the URL shortener? Reach CONSENSUS when you agree."


@pytest.fixture
def settings(pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path) -> Settings:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"embeddings": "hashed"}))
    return Settings(
        data_dir=tmp_path / "data", database_url=SecretStr(pg_url), redis_url=SecretStr(redis_base_url),
        redis_prefix=redis_prefix,
        scripted_model=script, memory_extraction="structured",
    )  # fmt: skip


def script(settings: Settings, **data: Any) -> None:
    """What the scripted model answers in processes opened from now on (hashed embeddings: no inference)."""
    assert settings.scripted_model is not None
    settings.scripted_model.write_text(json.dumps({"embeddings": "hashed", **data}))


class Spy:
    """The factory's model chain with every request kept (each call still goes through the chain)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        self.requests.append(request)
        response: ChatResponse = await self.inner.complete(request, timeout_s=timeout_s)
        return response

    async def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        self.requests.append(request)
        async for item in self.inner.stream(request, timeout_s=timeout_s):
            yield item


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[Factory, GroupChats, Spy]]:
    async with open_factory(settings) as factory:
        spy = Spy(factory.model)
        yield factory, group_chats(factory, model=spy, poll_s=0.05), spy


def speakers(lines: list[ChatEntry]) -> list[str]:
    return [e.source for e in lines if e.kind == "team"]


async def ledger(factory: Factory, session_id: str) -> dict[str, int]:
    """Model calls of the session in the usage ledger, by purpose."""
    async with factory.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT purpose, count(*) FROM usage_ledger WHERE run_id = %s GROUP BY purpose", (session_id,)
        )
        return {str(p): int(n) for p, n in await cur.fetchall()}


async def test_the_selector_orders_the_speakers_whose_messages_stream_as_labelled_events(
    settings: Settings, redis: Any
) -> None:
    picks = [C, "I pick solution_architecture.", "Security Engineering"]
    script(settings, latency_s=0.4, purposes={"groupchat_select": picks})  # a message written over 0.4 s
    async with opened(settings) as (factory, chats, spy):
        session = await chats.start(TOPIC, [A, B, C], by="ana", options=GroupChatOptions(max_messages=3))
        lines = await chats.transcript(session.id)
        calls = await ledger(factory, session.id)
        await factory.stream.flush(5)
    assert session.status is SessionStatus.ENDED and session.stop_reason == "max_messages"
    assert [(e.seq, e.kind) for e in lines] == [(0, "topic"), (1, "team"), (2, "team"), (3, "team")]
    assert lines[0].text == TOPIC and lines[0].source == "ana"
    assert speakers(lines) == [C, A, B] and {e.meta["selected_by"] for e in lines[1:]} == {"selector"}
    assert all(e.tokens > 0 for e in lines[1:])
    # Every call went through the chain into the ledger, each team with its own alias.
    assert calls == {"groupchat_select": 3, "groupchat": 3, "groupchat_summary": 1}
    assert {r.team: r.alias for r in spy.requests if r.purpose == "groupchat"} == {t: team(t).alias for t in (A, B, C)}
    # The live stream carries each team's message as it is written, then the stored line.
    raw = await redis.xrange(f"{settings.redis_prefix}events:{session.id}")
    events = [json.loads(fields[b"json"]) for _, fields in raw]
    chunks = [e["data"] for e in events if e["type"] == "groupchat.chunk"]
    assert {c["team"] for c in chunks} == {A, B, C} and {c["seq"] for c in chunks} == {1, 2, 3}
    first = "".join(c["text"] for c in chunks if c["seq"] == 1)
    assert first == lines[1].text and len([c for c in chunks if c["seq"] == 1]) > 1
    messages = [e["data"] for e in events if e["type"] == "groupchat.message"]
    assert [(m["seq"], m["source"]) for m in messages] == [(0, "ana"), (1, C), (2, A), (3, B)]
    assert [e["type"] for e in events][0] == "groupchat.opened" and events[-1]["type"] == "groupchat.ended"


async def test_an_unknown_then_an_excluded_speaker_fall_back_to_round_robin_without_livelock(
    settings: Settings,
) -> None:
    # The selector names a team not in the session, then the one that just spoke (excluded), then
    # the same team over and over (AutoGen #7471 would repeat the excluded speaker forever).
    script(settings, purposes={"groupchat_select": ["marketing", A, B, B, B, B]})
    async with opened(settings) as (factory, chats, _):
        session = await chats.start(TOPIC, [A, B, C], by="ana", options=GroupChatOptions(max_messages=6))
        lines = await chats.transcript(session.id)
        calls = await ledger(factory, session.id)
    assert session.stop_reason == "max_messages" and session.team_messages == 6
    assert speakers(lines) == [A, B, C, B, C, B]
    assert [e.meta["selected_by"] for e in lines[1:]] == ["round_robin"] * 3 + ["selector", "round_robin", "selector"]
    assert [e.meta["selector_answer"] for e in lines[1:3]] == ["marketing", A]
    assert calls["groupchat_select"] == 6  # one selector call per turn: no retries


async def test_no_team_speaks_more_than_max_consecutive_times_in_a_row(settings: Settings) -> None:
    script(settings, purposes={"groupchat_select": [A] * 9})
    async with opened(settings) as (_, chats, _spy):
        options = GroupChatOptions(max_messages=9, max_consecutive=2)
        session = await chats.start(TOPIC, [A, B, C], by="ana", options=options)
        lines = await chats.transcript(session.id)
    assert speakers(lines) == [A, A, B, A, A, B, A, A, B]


async def test_consensus_by_a_participant_ends_it_but_not_in_the_topic_or_the_operators_words(
    settings: Settings,
) -> None:
    script(settings, teams={B: ["Agreed: one service, split later if needed. CONSENSUS"]})
    async with opened(settings) as (_, chats, spy):
        session = await chats.open(TOPIC, [A, B], by="ana", options=GroupChatOptions(max_messages=6))
        await chats.interject(session.id, "Say CONSENSUS only when you mean it.", by="ana")
        session = await chats.drive(session.id)
        lines = await chats.transcript(session.id)
    # The topic and the interjection hold the marker; A's turn heard both and went on; B's ended it.
    assert [(e.kind, e.source) for e in lines] == [("topic", "ana"), ("operator", "ana"), ("team", A), ("team", B)]
    assert session.stop_reason == "consensus" and session.team_messages == 2
    first = next(r for r in spy.requests if r.purpose == "groupchat")
    assert "CONSENSUS only when you mean it" in first.messages[-1].content


async def test_the_timeout_ends_the_session_during_a_turn_and_commits_nothing_of_it(settings: Settings) -> None:
    script(settings, latency_s=0.6)  # each message takes 0.6 s, written word by word
    async with opened(settings) as (factory, chats, _):
        options = GroupChatOptions(max_messages=20, timeout_s=1.5)
        started = asyncio.get_running_loop().time()
        session = await chats.start(TOPIC, [A, B], by="ana", options=options)
        took = asyncio.get_running_loop().time() - started
        lines = await chats.transcript(session.id)
    assert session.stop_reason == "timeout" and 1 <= session.team_messages <= 3
    assert session.elapsed_s >= 1.5 and took < 15  # the summary (also 0.6 s) follows
    assert len(lines) == 1 + session.team_messages  # the turn cut short left no line
    assert all(e.text.endswith("understood.") for e in lines[1:])


async def test_the_token_budget_ends_the_session(settings: Settings) -> None:
    async with opened(settings) as (factory, chats, _):
        session = await chats.start(TOPIC, [A, B, C], by="ana", options=GroupChatOptions(token_budget=300))
        spent = (await factory.store.spent(session.id)).tokens
    # The first turn (its system message holds the team's identity docs) spends it all.
    assert session.stop_reason == "token_budget" and session.team_messages == 1 and spent >= 300


async def test_an_interjection_reaches_the_next_speaker(settings: Settings) -> None:
    script(settings, latency_s=0.3)
    async with opened(settings) as (factory, chats, spy):
        session = await chats.open(TOPIC, [A, B, C], by="ana", options=GroupChatOptions(max_messages=4))
        driving = asyncio.create_task(chats.drive(session.id))
        for _ in range(200):  # the first team message is stored, the second being written
            if len(await chats.transcript(session.id)) >= 2:
                break
            await asyncio.sleep(0.05)
        queued = await chats.interject(session.id, "What about GDPR for the click logs?", by="bo")
        session = await asyncio.wait_for(driving, 60)
        lines = await chats.transcript(session.id)
        interjections = await chats.interjections(session.id)
        audit = await factory.audit.entries(session.id)
    operator = next(e for e in lines if e.kind == "operator")
    after = lines[operator.seq + 1]
    assert (operator.source, operator.text, operator.meta["interjection"]) == ("bo", queued.text, queued.id)
    assert after.kind == "team" and interjections[0].consumed_seq == operator.seq
    heard = [r for r in spy.requests if r.purpose == "groupchat" and r.team == after.source]
    request = next(r for r in heard if "GDPR" in r.messages[-1].content)
    assert request.messages[-1].content.endswith("[operator bo]: What about GDPR for the click logs?")
    earlier = [r for r in spy.requests if r.purpose == "groupchat"][: operator.seq - 1]
    assert not any("GDPR" in m.content for r in earlier for m in r.messages)  # nobody heard it before
    assert [e.kind for e in audit] == ["groupchat.created", "groupchat.interjection", "groupchat.ended"]


async def test_the_outcome_is_summarised_retained_audited_and_can_seed_a_run(settings: Settings) -> None:
    summary = {
        "overview": "One service now, split the redirect path later.",
        "decisions": ["Start with one service", "PostgreSQL for links"],
        "open_questions": ["Retention of click logs?"],
        "positions": [{"team": A, "argued": "A monolith is enough."}, {"team": B, "argued": "Rate-limit it."}],
    }
    script(settings, purposes={"groupchat_summary": [summary]})
    async with opened(settings) as (factory, chats, _):
        session = await chats.start(TOPIC, [A, B], by="ana", options=GroupChatOptions(max_messages=2))
        banks = {k: await factory.memory.gateway.store.banks_with(session.id, k) for k in MemoryKind}
        report = await factory.audit.verify(session.id)
        entries = await factory.audit.entries(session.id)
        run = await chats.to_requirement(session.id, by="ana")
        stored = await factory.store.get_run(run.id)
        again = await chats.get(session.id)
        recalled = await factory.memory.gateway.recall(A, "split the redirect path later", budget_tokens=2000)
    assert session.summary is not None and session.summary.source == "model"
    assert session.summary.decisions == summary["decisions"] and [p.team for p in session.summary.positions] == [A, B]
    assert banks[MemoryKind.TRANSCRIPT] == banks[MemoryKind.DECISION] == {A, B, SHARED_BANK}
    assert any("split the redirect path later" in r.item.text for r in recalled)
    assert report.intact and [e.kind for e in entries] == ["groupchat.created", "groupchat.ended"]
    ended = json.loads(entries[-1].payload)
    assert (
        ended["stop_reason"] == "max_messages" and ended["team_messages"] == 2 and len(ended["transcript_sha256"]) == 64
    )
    assert stored is not None and "Start with one service" in stored.requirement and session.id in stored.requirement
    assert stored.pipeline_name == "phase1" and again.run_ids == [run.id]


async def test_the_factorys_own_budget_ends_the_session_and_the_summary_falls_back_to_the_transcript(
    settings: Settings,
) -> None:
    budgeted = settings.model_copy(update={"budget_run_tokens": 300})  # the factory's budget per run (and session)
    async with opened(budgeted) as (factory, chats, _):
        session = await chats.start(TOPIC, [A, B], by="ana", options=GroupChatOptions(token_budget=None))
        rows = await factory.store.usage(session.id)
    assert session.status is SessionStatus.ENDED and session.stop_reason == "token_budget"
    assert session.team_messages == 1 and session.summary is not None and session.summary.source == "transcript"
    assert "budget" in session.summary.overview and [p.team for p in session.summary.positions] == [A]
    assert [r.purpose for r in rows] == ["groupchat_select", "groupchat"]  # refused calls cost nothing


async def test_bad_input_is_refused_clearly_and_nothing_is_stored(settings: Settings) -> None:
    async with opened(settings) as (factory, chats, _):
        with pytest.raises(UnknownTeam, match="unknown team 'marketing'; known teams: product-management"):
            await chats.open(TOPIC, [A, "marketing"], by="ana")
        with pytest.raises(InputError, match="2 to 8 teams"):
            await chats.open(TOPIC, A, by="ana")
        with pytest.raises(InputError, match="topic is empty"):
            await chats.open("  ", [A, B], by="ana")
        assert await chats.recent() == []
        with pytest.raises(RunNotFound, match="no group chat 'gc-nope'"):
            await chats.get("gc-nope")
        session = await chats.start(TOPIC, [A, B], by="ana", options=GroupChatOptions(max_messages=1))
        with pytest.raises(InputError, match="has ended its discussion"):
            await chats.interject(session.id, "Too late?", by="ana")
        assert not await chats.stop(session.id, by="ana")  # over already
        with pytest.raises(InputError, match="no summary yet|has no"):
            await chats.to_requirement((await chats.open(TOPIC, [A, B], by="ana")).id, by="ana")
        assert [s.id for s in await chats.recent(status=SessionStatus.ENDED)] == [session.id]


async def test_a_stop_cancels_the_message_being_written_and_keeps_nothing_of_it(settings: Settings) -> None:
    script(settings, latency_s=4)  # each call takes 4 s (the selector's too), a message written word by word
    async with opened(settings) as (factory, chats, _):
        session = await chats.open(TOPIC, [A, B], by="ana")
        driving = asyncio.create_task(chats.drive(session.id))
        chunks: list[Any] = []
        factory.bus.subscribe(lambda e: chunks.append(e) if e.type == "groupchat.chunk" else None)
        for _ in range(400):
            if chunks:
                break
            await asyncio.sleep(0.05)
        assert await chats.stop(session.id, by="ana")
        session = await asyncio.wait_for(driving, 30)
        lines = await chats.transcript(session.id)
    # Had the message run to its end, it would be stored (the stop is otherwise seen between messages).
    assert session.stop_reason == "stopped" and session.team_messages == 0 and lines == []
    assert "".join(c.data["text"] for c in chunks).strip()  # it had begun to be written
