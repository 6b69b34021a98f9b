"""One group-chat session as one thread shows it (``SessionView``): a headline (state, Stop or Resume),
one message per team turn (streamed as it is written, then final), interjections from elsewhere, and
the end (summary, Run this as a requirement). Drawn from the store; live events say what changed and
carry the words being written. Message ids derive from the thread, the session and the transcript
line, so a reopened thread or a redraw updates messages instead of adding copies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import chainlit as cl
from chainlit.utils import utc_now

from chat import groupchat_render as show
from chat.live import element_id
from chat.runtime import runtime
from observability.base import Event
from teams.groupchat.base import ChatEntry, GroupChatSession, SessionStatus


@dataclass
class Writing:
    """A team message being written: what arrived of it so far, and its message in the page."""

    team: str
    text: str = ""
    message: cl.Message | None = None


@dataclass
class SessionView:
    """One session as one thread shows it: a headline (state, Stop), one message per team turn (streamed
    as it is written, then final), interjections from elsewhere, and the end (summary, Run)."""

    session_id: str
    thread_id: str
    viewer: bool = False
    typed: set[str] = field(default_factory=set)  # what the operator typed here (their own messages)
    known: set[str] = field(default_factory=set)  # message ids the thread already holds (reopened)
    drawn: dict[str, tuple[str, cl.Message]] = field(default_factory=dict)
    writing: dict[int, Writing] = field(default_factory=dict)  # by transcript line (seq)
    seen: int = -1  # the last transcript line drawn
    team_lines: int = 0
    ended: bool = False  # the end is shown: a typed message opens a new discussion
    actions: dict[str, list[cl.Action]] = field(default_factory=dict)  # per message key

    def ident(self, key: str) -> str:
        return element_id(self.thread_id, self.session_id, *key.split(":"))

    async def catch_up(self) -> GroupChatSession:
        """Bring every message of the session up to date with the store."""
        chats = runtime.chats
        session = await chats.get(self.session_id)
        if not self.drawn:
            await self._head(session)
            if session.topic.strip() not in self.typed:  # opened elsewhere: show what it is about
                await self._message("topic", show.other_line(topic_line(session)))
        for entry in await chats.transcript(self.session_id, after_seq=self.seen):
            await self._line(entry)
        session = await chats.get(self.session_id)
        if session.stop_reason is not None or session.status is not SessionStatus.RUNNING:
            await self._cut(session)
        await self._head(session)
        if session.status is SessionStatus.ENDED and not self.ended:
            await self._end(session)
        return session

    async def apply(self, events: Sequence[Event]) -> None:
        """Live events of this session: words being written are streamed; anything else is read back
        from the store (so a missed event costs nothing but a read)."""
        refresh, dirty = False, set()
        for event in events:
            kind, data = event.type.removeprefix("groupchat."), event.data
            if kind == "chunk":
                seq = int(data.get("seq", -1))
                if seq > self.seen:
                    writing = self.writing.setdefault(seq, Writing(str(data.get("team", ""))))
                    writing.text += str(data.get("text", ""))
                    dirty.add(seq)
            elif kind == "interjection":
                await self._interjection(data)
            elif kind == "requirement":
                await self.seeded(str(data.get("run_id", "")), str(data.get("by", "")))
            else:  # opened, message, stop_requested, ended, failed
                refresh = True
        if refresh:
            await self.catch_up()
        for seq in sorted(s for s in dirty if s > self.seen and s in self.writing):
            await self._stream(seq)

    async def _stream(self, seq: int) -> None:
        writing = self.writing[seq]
        if writing.message is None:
            writing.message = cl.Message(content="", id=self.ident(f"line:{seq}"), author=writing.team)
            writing.message.created_at = utc_now()  # its place is where it began, not where it ended
        text = show.team_line(writing.team, writing.text, number=self.team_lines + 1)
        await writing.message.stream_token(text, is_sequence=True)

    async def _line(self, entry: ChatEntry) -> None:
        if entry.seq <= self.seen:
            return
        self.seen = entry.seq
        if entry.kind == "topic":
            return  # typed here, or shown when the view began
        if entry.kind == "operator":
            key = f"interjection:{entry.meta.get('interjection', entry.seq)}"
            if key not in self.drawn and entry.text.strip() not in self.typed:
                await self._message(key, show.other_line(entry))
            return
        self.team_lines += 1
        text = show.team_line(entry.source, entry.text, number=self.team_lines, entry=entry)
        writing = self.writing.pop(entry.seq, None)
        if writing is not None and writing.message is not None:
            writing.message.content = text
            await writing.message.send()  # ends the stream; the history keeps the whole message
            self.drawn[f"line:{entry.seq}"] = (text, writing.message)
        else:
            await self._message(f"line:{entry.seq}", text)

    async def _cut(self, session: GroupChatSession) -> None:
        """Messages that were being written when the discussion ended or failed: kept as far as they got."""
        why = "the turn failed" if session.status is SessionStatus.FAILED else "the discussion ended"
        for seq in sorted(self.writing):
            writing = self.writing.pop(seq)
            if writing.message is not None:
                number = self.team_lines + 1
                writing.message.content = show.team_line(writing.team, writing.text, number=number, cut=why)
                await writing.message.send()

    async def _interjection(self, data: dict[str, Any]) -> None:
        """An operator's line queued from elsewhere (another operator, the CLI): shown now, where the next
        speaker will hear it. One typed here is on the page already, as the operator's own message."""
        key = f"interjection:{data.get('id')}"
        if key in self.drawn or str(data.get("text", "")).strip() in self.typed:
            return
        entry = ChatEntry(session_id=self.session_id, seq=-1, kind="operator", source=str(data.get("by", "")),
                          text=str(data.get("text", "")), created_at=datetime.now(UTC))  # fmt: skip
        await self._message(key, show.other_line(entry))

    async def _head(self, session: GroupChatSession) -> None:
        actions = []
        if not self.viewer and session.status is SessionStatus.RUNNING and session.stop_reason is None:
            if session.stop_requested_by is None:
                actions.append(button("groupchat_stop", "Stop", "square", id=session.id))
        if not self.viewer and session.status is SessionStatus.FAILED:
            actions.append(button("groupchat_resume", "Resume", "play", id=session.id))
        await self._message("head", show.headline(session, viewer=self.viewer), actions)

    async def _end(self, session: GroupChatSession) -> None:
        self.ended = True
        actions = []
        if not self.viewer and not session.run_ids and session.summary is not None:
            actions.append(button("groupchat_seed", "Run this as a requirement", "rocket", id=session.id))
        await self._message("end", show.ending(session, viewer=self.viewer), actions)
        for run_id in session.run_ids:
            await self.seeded(run_id, "")

    async def seeded(self, run_id: str, by: str) -> None:
        here = run_id in (cl.user_session.get("runs") or [])
        if not run_id or f"run:{run_id}" in self.drawn:
            return
        await self._message(f"run:{run_id}", show.seeded(run_id, by or "an operator", here=here))
        await self._buttons("end", [])  # seeded: no second run from the same click

    async def _message(self, key: str, text: str, actions: list[cl.Action] | None = None) -> cl.Message:
        """Send or update the message ``key``; ``actions`` (when given) replace its buttons."""
        ident = self.ident(key)
        drawn = self.drawn.get(key)
        message = drawn[1] if drawn is not None else cl.Message(content=text, id=ident, author="group chat")
        if drawn is None or drawn[0] != text:
            message.content = text
            self.drawn[key] = (text, message)  # before sending: a concurrent draw of it updates, never adds
            if drawn is None and ident not in self.known:
                await message.send()
            else:
                await message.update()
        if actions is not None:
            await self._buttons(key, actions)
        return message

    async def _buttons(self, key: str, actions: list[cl.Action]) -> None:
        """The message's buttons, sent on their own (a reopened thread keeps messages, not buttons)."""
        old = self.actions.get(key, [])
        if [(a.name, a.payload) for a in old] == [(a.name, a.payload) for a in actions]:
            return
        for action in old:
            await action.remove()
        for action in actions:
            await action.send(for_id=self.ident(key))
        self.actions[key] = actions


def button(name: str, label: str, icon: str, **payload: str) -> cl.Action:
    return cl.Action(name=name, payload=payload, label=label, icon=icon)


def topic_line(session: GroupChatSession) -> ChatEntry:
    return ChatEntry(session_id=session.id, seq=0, kind="topic", source=session.created_by, text=session.topic,
                     created_at=session.created_at)  # fmt: skip
