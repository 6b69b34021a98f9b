"""Driving one discussion: turn after turn, under the session's lease, until a stop reason.

Before each turn, one round trip reads what the operator did (a stop, queued interjections) and the
tokens spent; the termination conditions are checked; the interjections (and, on the first turn,
the topic) become the turn's task, so the next speaker hears them; the team runs one turn, its
message streaming out as live events; then the heard lines, the team's message and AutoGen's
saved state commit together. During a turn the operator's stop and the timeout cancel it (the
turn's ``CancellationToken`` reaches the model call); a stopped turn commits nothing.

Every loop is bounded: at most ``max_messages`` turns, each turn bounded by the session's time
left, the stop watcher by the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import ModelClientStreamingChunkEvent, TextMessage
from autogen_agentchat.teams import SelectorGroupChat
from autogen_core import CancellationToken

from factory.errors import BudgetExceeded, FactoryError, PipelineError
from observability.base import Event
from teams.groupchat.base import (
    INTERJECTIONS_PER_TURN,
    ChatEntry,
    GroupChatSession,
    Interjection,
    StopReason,
)
from teams.groupchat.client import RoutedChatCompletionClient
from teams.groupchat.deps import GroupChatDeps
from teams.groupchat.selection import Selector, agent_name
from teams.groupchat.session import build_team, identities
from teams.groupchat.termination import Progress, is_consensus, stop_reason
from teams.lease import Lease

log = logging.getLogger(__name__)


class _CancelledOnPurpose(logging.Filter):
    """AutoGen's runtime logs a handler that was cancelled as an error with its traceback; a turn
    cancelled by the operator's stop or the timeout is no error, and no operator should read one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


logging.getLogger("autogen_core").addFilter(_CancelledOnPurpose())


class TurnFailed(PipelineError):
    """A team's turn failed (its model call, or AutoGen itself); the session can be resumed."""


async def emit(deps: GroupChatDeps, session_id: str, name: str, /, **data: Any) -> None:
    """A live event ``groupchat.<name>`` of the session, keyed by the session id."""
    await deps.events.emit(Event(type=f"groupchat.{name}", run_id=session_id, data=data, at=datetime.now(UTC)))


def entry_event(entry: ChatEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json", exclude={"session_id", "created_at"})


#: A message's chunks are sent as live events at most this often (a model streams tokens far faster
#: than anyone reads them; each event is two stream entries in Redis).
CHUNK_LINGER_S = 0.05


@dataclass
class _Turn:
    """What one turn produced."""

    message: TextMessage | None = None
    stopped: StopReason | None = None  # the turn was cancelled: by the operator, or the timeout


@dataclass
class _Written:
    """The message being written, sent as ``groupchat.chunk`` events (gathered for ``CHUNK_LINGER_S``)."""

    deps: GroupChatDeps
    session_id: str
    seq: int
    team: str = ""
    parts: list[str] = field(default_factory=list)
    sent: float = 0.0

    async def add(self, team: str, text: str) -> None:
        self.team = team
        self.parts.append(text)
        if time.monotonic() - self.sent >= CHUNK_LINGER_S:
            await self.flush()

    async def flush(self) -> None:
        if self.parts:
            text, self.parts = "".join(self.parts), []
            await emit(self.deps, self.session_id, "chunk", team=self.team, seq=self.seq, text=text)
        self.sent = time.monotonic()


class Discussion:
    """One process's drive of one session; ``run`` returns why the discussion ended."""

    def __init__(self, deps: GroupChatDeps, session: GroupChatSession, lease: Lease) -> None:
        self._d = deps
        self._s = session
        self._lease = lease
        self._options = session.options
        self._started = time.monotonic()
        self._token: CancellationToken | None = None
        self._stop_by: str | None = None
        self._agents = {agent_name(t): t for t in session.teams}
        self.selector = Selector(
            deps.model,
            session_id=session.id,
            topic=session.topic,
            teams=session.teams,
            max_consecutive=session.options.max_consecutive,
            alias=session.options.selector_alias,
            timeout_s=deps.timeout_s,
        )

    def elapsed(self) -> float:
        return self._s.elapsed_s + time.monotonic() - self._started

    async def run(self) -> StopReason:
        prompts = await identities(self._s, self._d.gateway)
        chat, clients = build_team(
            self._s, prompts, self._d.model, self.selector,
            timeout_s=self._d.timeout_s, window_tokens=self._d.window_tokens,
        )  # fmt: skip
        state = await self._d.store.state(self._s.id)
        if state is not None:
            await chat.load_state(state)
        watcher = asyncio.create_task(self._watch_stop(), name=f"groupchat-stop {self._s.id}")
        try:
            return await self._turns(chat, clients, first=state is None)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _turns(
        self, chat: SelectorGroupChat, clients: dict[str, RoutedChatCompletionClient], *, first: bool
    ) -> StopReason:
        seq, team_messages = self._s.entries, self._s.team_messages
        for _ in range(self._options.max_messages + 1):  # each pass commits a team message, or returns
            stop_by, tokens, queued = await self._d.store.controls(self._s.id, limit=INTERJECTIONS_PER_TURN)
            self._stop_by = self._stop_by or stop_by
            reason = stop_reason(self._options, Progress(team_messages, self.elapsed(), tokens, self._stop_by))
            if reason is not None:
                return reason
            heard = self._heard(seq, first, queued)
            turn = await self._turn(chat, clients, heard, seq + len(heard))
            if turn.stopped is not None:
                return turn.stopped
            assert turn.message is not None
            entry = self._entry(turn.message, seq + len(heard))
            team_messages += 1
            await self._d.store.commit(
                self._lease, [*heard, entry], state=dict(await chat.save_state()),
                consumed=[(i.id, e.seq) for i, e in zip(queued, heard[int(first):], strict=True)],
                team_messages=team_messages, elapsed_s=self.elapsed(),
            )  # fmt: skip
            for line in [*heard, entry]:
                await emit(self._d, self._s.id, "message", **entry_event(line))
            seq, first = entry.seq + 1, False
            if is_consensus(entry.text, entry.source, self._s.teams, self._options.consensus_marker):
                return "consensus"
        return "max_messages"  # not reached: the check before the last pass ends it

    def _heard(self, seq: int, first: bool, queued: list[Interjection]) -> list[ChatEntry]:
        """The lines the next speaker hears first: the topic (first turn), then the interjections."""
        now = datetime.now(UTC)
        heard = []
        if first:
            heard.append(ChatEntry(session_id=self._s.id, seq=seq, kind="topic", source=self._s.created_by,
                                   text=self._s.topic, created_at=now))  # fmt: skip
        for interjection in queued:
            heard.append(
                ChatEntry(
                    session_id=self._s.id, seq=seq + len(heard), kind="operator", source=interjection.by,
                    text=interjection.text, created_at=now, meta={"interjection": interjection.id},
                )
            )  # fmt: skip
        return heard

    def _entry(self, message: TextMessage, seq: int) -> ChatEntry:
        usage = message.models_usage
        chosen = self.selector.last
        meta = {"selected_by": chosen.how, "selector_answer": chosen.answer} if chosen else {}
        return ChatEntry(
            session_id=self._s.id,
            seq=seq,
            kind="team",
            source=self._agents[message.source],
            text=message.content,
            tokens=(usage.prompt_tokens + usage.completion_tokens) if usage else 0,
            created_at=datetime.now(UTC),
            meta=meta,
        )

    async def _turn(
        self,
        chat: SelectorGroupChat,
        clients: dict[str, RoutedChatCompletionClient],
        heard: list[ChatEntry],
        seq: int,
    ) -> _Turn:
        """One speaker's message (a stop or the timeout cancels it: ``stopped`` says which)."""
        token = self._token = CancellationToken()
        left = self._options.timeout_s - self.elapsed()
        timer = asyncio.get_running_loop().call_later(max(0.0, left), token.cancel)
        task = [TextMessage(content=e.text, source=e.source) for e in heard] or None
        turn = _Turn()
        written = _Written(self._d, self._s.id, seq)
        for client in clients.values():
            client.failure = None
        # Closed here, not when collected: AutoGen marks the team idle only in the stream's own
        # ``finally`` (after its runtime stops), and a next turn started before that was refused
        # ("The team is already running"), which a loaded machine showed now and then.
        stream = chat.run_stream(task=task, cancellation_token=token, output_task_messages=False)
        try:
            async with aclosing(stream):
                async for item in stream:
                    if isinstance(item, ModelClientStreamingChunkEvent):
                        await written.add(self._agents.get(item.source, item.source), item.content)
                    elif isinstance(item, TextMessage) and item.source in self._agents:
                        await written.flush()
                        turn.message = item
                    elif isinstance(item, TaskResult):
                        break
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not token.is_cancelled() or (current is not None and current.cancelling()):
                raise  # this process is stopping: the session stays running, for resume
            turn.stopped = "stopped" if self._stop_by is not None else "timeout"
            return turn
        except Exception as exc:
            if token.is_cancelled():  # the cancel surfaced as the speaker's error
                turn.stopped = "stopped" if self._stop_by is not None else "timeout"
                return turn
            raise self._failed(clients, exc) from exc
        finally:
            timer.cancel()
            self._token = None
            await written.flush()  # what a stopped message showed
        if turn.message is None:
            if token.is_cancelled():
                turn.stopped = "stopped" if self._stop_by is not None else "timeout"
                return turn
            raise self._failed(clients, RuntimeError("the turn ended without a team message"))
        return turn

    def _failed(self, clients: dict[str, RoutedChatCompletionClient], exc: Exception) -> Exception:
        """The cause of a failed turn: a speaker's call error when there is one (a spent budget ends
        the session instead of failing it: ``BudgetExceeded`` goes up as it is)."""
        cause = next((c.failure for c in clients.values() if c.failure is not None), None)
        if isinstance(cause, BudgetExceeded):
            return cause
        if isinstance(cause, FactoryError):
            return TurnFailed(f"group chat {self._s.id}: a turn failed: {cause}")
        return TurnFailed(f"group chat {self._s.id}: a turn failed: {cause or exc}")

    async def _watch_stop(self) -> None:
        """Poll for the operator's stop while the session is driven; cancel the turn when it comes."""
        for _ in range(int(self._options.timeout_s / self._d.poll_s) + 2):
            await asyncio.sleep(self._d.poll_s)
            try:
                by = await self._d.store.stop_requested(self._s.id)
            except Exception as exc:  # a database hiccup: the check between turns still sees the stop
                log.warning("group chat %s: stop not checked (%s)", self._s.id, exc)
                continue
            if by is not None:
                self._stop_by = by
                if self._token is not None:
                    self._token.cancel()
                return
