"""Group chat: orchestration overhead per message, and what a session leaves behind. Prints JSON.

    python -m bench.groupchat [--sessions 10] [--messages 20]

Overhead per message is the interval between two consecutive team messages being stored (the live
``groupchat.message`` event, emitted right after the commit) minus the time spent inside the model
in that interval: a zero-latency scripted model (and hashed embeddings), so what is measured is the
factory's own work per message — AutoGen's team turn (runtime start, manager, agent, selector),
the routed client, the usage ledger's row per call, the budget check, the live events, the
control read before the turn and the commit of the message with AutoGen's saved state after it —
on embedded PostgreSQL and Redis. The first message of a session (recall, building the team) is
reported apart. Two teams (one candidate each turn: no selector call) and three (a selector call
every turn) are measured.

Retained per session: memory items (transcript chunks and the summary, in each team's bank and
the shared world) with their bytes, transcript rows, the saved state's size, ledger rows and
audit entries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.pipeline_overhead import ZeroLatencyEmbedder, machine_reference
from bench.stats import pct
from factory import services
from factory.settings import Settings
from factory.wiring import Factory, group_chats, open_factory
from observability.base import Event
from routing.base import ChatRequest, ChatResponse
from routing.scripted import ScriptedModel
from teams.groupchat import GroupChatOptions

TOPIC = "Monolith or services for the URL shortener, and which database?"
TEAMS = {
    "two_teams": ["solution-architecture", "security-engineering"],
    "three_teams": ["solution-architecture", "security-engineering", "qa-engineering"],
}


class TimedModel:
    """The scripted model, every call's interval kept (model time is subtracted from the overhead)."""

    def __init__(self) -> None:
        self.inner = ScriptedModel()
        self.calls: list[tuple[float, float]] = []

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        started = time.perf_counter()
        try:
            return await self.inner.complete(request, timeout_s=timeout_s)
        finally:
            self.calls.append((started, time.perf_counter()))

    async def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        started = time.perf_counter()
        try:
            async for item in self.inner.stream(request, timeout_s=timeout_s):
                yield item
        finally:
            self.calls.append((started, time.perf_counter()))

    def within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.calls)


def figures(values: list[float]) -> dict[str, float]:
    return {
        "messages": len(values),
        "p50_ms": round(statistics.median(values), 3),
        "p95_ms": round(pct(values, 0.95), 3),
        "max_ms": round(max(values), 3),
    }


async def measure(
    factory: Factory, model: TimedModel, stored: list[float], teams: list[str], sessions: int, messages: int
) -> dict[str, Any]:
    """``stored``: when each team message was stored (filled from the live events)."""
    chats = group_chats(factory)
    options = GroupChatOptions(max_messages=messages, token_budget=None)
    await chats.start(TOPIC, teams, by="bench", options=options)  # warm-up: connections, imports, caches
    steady: list[float] = []
    by_position: dict[str, list[float]] = {"messages_2_to_5": [], f"messages_{messages - 4}_to_{messages}": []}
    first: list[float] = []
    ids = []
    for _ in range(sessions):
        stored.clear()
        model.calls.clear()
        session = await chats.open(TOPIC, teams, by="bench", options=options)
        started = time.perf_counter()
        ended = await chats.drive(session.id)
        assert ended.stop_reason == "max_messages" and ended.team_messages == messages, ended
        ids.append(session.id)
        first.append((stored[0] - started - model.within(started, stored[0])) * 1000)
        for index in range(1, len(stored)):
            start, end = stored[index - 1], stored[index]
            overhead = (end - start - model.within(start, end)) * 1000
            steady.append(overhead)
            if index + 1 <= 5:
                by_position["messages_2_to_5"].append(overhead)
            elif index + 1 > messages - 5:
                by_position[f"messages_{messages - 4}_to_{messages}"].append(overhead)
    return {
        "overhead_per_message": figures(steady),
        "by_position_p50_ms": {k: round(statistics.median(v), 3) for k, v in by_position.items()},
        "first_message_p50_ms": round(statistics.median(first), 3),
        "retained_per_session": await retained(factory, ids),
    }


async def retained(factory: Factory, ids: list[str]) -> dict[str, float]:
    """Averages over the measured sessions of what each left in PostgreSQL."""
    async with factory.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT"
            " (SELECT count(*) FROM memory_items WHERE run_id = ANY(%(ids)s)),"
            " (SELECT coalesce(sum(octet_length(text) + octet_length(metadata::text)), 0) FROM memory_items"
            "   WHERE run_id = ANY(%(ids)s)),"
            " (SELECT count(*) FROM memory_items WHERE run_id = ANY(%(ids)s) AND kind = 'transcript'),"
            " (SELECT count(*) FROM groupchat_messages WHERE session_id = ANY(%(ids)s)),"
            " (SELECT coalesce(sum(pg_column_size(m.*)), 0) FROM groupchat_messages m WHERE session_id = ANY(%(ids)s)),"
            " (SELECT coalesce(sum(octet_length(state::text)), 0) FROM groupchat_sessions WHERE id = ANY(%(ids)s)),"
            " (SELECT coalesce(sum(pg_column_size(state)), 0) FROM groupchat_sessions WHERE id = ANY(%(ids)s)),"
            " (SELECT count(*) FROM usage_ledger WHERE run_id = ANY(%(ids)s)),"
            " (SELECT count(*) FROM audit_entries WHERE run_id = ANY(%(ids)s))",
            {"ids": ids},
        )
        row = await cur.fetchone()
    assert row is not None
    n = len(ids)
    names = [
        "memory_items", "memory_bytes", "memory_transcript_items", "transcript_rows", "transcript_bytes",
        "saved_state_json_bytes", "saved_state_stored_bytes", "ledger_rows", "audit_entries",
    ]  # fmt: skip
    return {name: round(int(value) / n, 1) for name, value in zip(names, row, strict=True)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20)
    args = parser.parse_args()
    report: dict[str, Any] = {"machine_reference_loop_s": machine_reference()}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=None, redis_url=None, scripted_model=None, verify=False)
        model = TimedModel()
        try:
            async with open_factory(settings, model=model, embedder=ZeroLatencyEmbedder()) as factory:
                stored: list[float] = []

                def seen(event: Event) -> None:
                    if event.type == "groupchat.message" and event.data.get("kind") == "team":
                        stored.append(time.perf_counter())

                factory.bus.subscribe(seen)
                for name, teams in TEAMS.items():
                    report[name] = await measure(factory, model, stored, teams, args.sessions, args.messages)
        finally:
            services.stop(Path(tmp))
    report["goals"] = {"overhead_per_message_p50_ms": 5.0}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
