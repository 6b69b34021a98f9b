"""What ``factory groupchat`` prints: pure functions from group chat's models to lines, and the
``Watcher`` that prints a driven session's live events as they come."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from factory.cli_common import safe

if TYPE_CHECKING:
    from observability.base import Event
    from teams.groupchat import ChatEntry, GroupChatSession


def entry_line(entry: ChatEntry | dict[str, Any]) -> str:
    """One transcript line, labelled by who said it."""
    e = entry if isinstance(entry, dict) else entry.model_dump(mode="json")
    if e["kind"] == "topic":
        return f"[topic, from {e['source']}] {e['text']}"
    if e["kind"] == "operator":
        return f"[operator {e['source']}] {e['text']}"
    return f"[{e['source']}] {e['text']}"


def summary_lines(session: GroupChatSession) -> list[str]:
    s = session.summary
    if s is None:
        return ["(no summary yet)"]
    lines = ["Summary" + (" (from the transcript: the summary model failed)" if s.source == "transcript" else "")]
    if s.overview.strip():
        lines.append(f"  {s.overview.strip()}")
    for title, items in (("Decisions", s.decisions), ("Open questions", s.open_questions)):
        lines.append(f"{title}:" if items else f"{title}: none")
        lines.extend(f"  - {item}" for item in items)
    if s.positions:
        lines.append("Positions:")
        lines.extend(f"  - {p.team}: {p.argued}" for p in s.positions)
    return lines


def status_line(session: GroupChatSession) -> str:
    why = f" ({session.stop_reason})" if session.stop_reason else ""
    return (
        f"group chat {session.id}: {session.status.value}{why}, {session.team_messages} team messages,"
        f" {session.elapsed_s:.0f}s"
    )


def header_lines(session: GroupChatSession) -> list[str]:
    o = session.options
    return [
        f"group chat {session.id} between {', '.join(session.teams)}",
        f"  opened by {session.created_by} at {session.created_at:%Y-%m-%d %H:%M:%S} UTC · at most"
        f" {o.max_messages} messages, {o.max_consecutive} in a row, {o.timeout_s:g}s,"
        f" {o.token_budget or 'unlimited'} tokens; a message holding {o.consensus_marker} ends it",
    ]


def hint_lines(session: GroupChatSession) -> list[str]:
    sid = session.id
    if session.status.value == "ended":
        return [f"seed a pipeline run from the summary: factory groupchat run {sid} [--detach]",
                f"read it again: factory groupchat show {sid}"]  # fmt: skip
    if session.status.value == "failed":
        return [f"error: {session.error}", f"continue it: factory groupchat resume {sid}"]
    return [f"join in: factory groupchat say {sid} TEXT · end it: factory groupchat stop {sid}",
            f"if its process died: factory groupchat resume {sid} (or a `factory worker` takes it)"]  # fmt: skip


def session_json(session: GroupChatSession, transcript: list[ChatEntry] | None = None) -> dict[str, Any]:
    data = session.model_dump(mode="json")
    if transcript is not None:
        data["transcript"] = [e.model_dump(mode="json", exclude={"session_id"}) for e in transcript]
    return data


class Watcher:
    """Prints a driven session's live events (``groupchat.*`` on the factory's bus) as they come:
    chunks streamed on a terminal, whole messages otherwise."""

    def __init__(self, session_id: str, *, err: bool, stream: bool, after_seq: int = 0) -> None:
        self._id = session_id
        self._err = err
        self._stream = stream
        self._open: int | None = None  # the seq of the message being streamed
        self._last = after_seq  # the last seq printed
        self._notes: list[str] = []  # printed once the message being streamed is done

    def _write(self, text: str, *, nl: bool = True) -> None:
        typer.echo(safe(text, lines=True), err=self._err, nl=nl)

    def _close(self, note: str = "") -> None:
        if self._open is not None:
            self._write(note)
            self._open = None
        for line in self._notes:
            self._write(line)
        self._notes.clear()

    def _note(self, line: str) -> None:
        self._notes.append(line)
        if self._open is None:
            self._close()

    def whole_messages(self) -> None:
        """From now on whole messages only (following a session from the middle of a message)."""
        self._close(" …")
        self._stream = False

    def entry(self, entry: ChatEntry) -> None:
        """A transcript line read from the store (catching up), unless it was printed already."""
        if entry.seq > self._last:
            self._last = entry.seq
            self._close(" …")
            self._write(entry_line(entry))

    @property
    def last_seq(self) -> int:
        return self._last

    def __call__(self, event: Event) -> None:
        if event.run_id != self._id:
            return
        d, kind = event.data, event.type.removeprefix("groupchat.")
        if kind == "chunk" and self._stream and d["seq"] > self._last:
            if self._open != d["seq"]:
                self._close(" …")
                self._open = d["seq"]
                self._write(f"[{d['team']}] ", nl=False)
            self._write(d["text"], nl=False)
        elif kind == "message" and d["seq"] > self._last:
            self._last = d["seq"]
            if self._open == d["seq"]:
                self._close()
            else:
                self._close(" …")
                self._write(entry_line(d))
        elif kind == "stop_requested":
            self._note(f"(stop asked by {d['by']}: the discussion ends, then the summary is written)")
        elif kind == "ended":
            self._close(" … (cut off)")
