"""``factory groupchat``: chosen teams discuss a topic, the operator in the room (DESIGN §2 E).

``factory groupchat --teams a,b,c TOPIC`` opens a session and drives it in this process, printing the
transcript as it happens (on a terminal each team's message streams in as it is written; otherwise
each message is printed whole once stored), then the summary and the session id. Every other
subcommand works from any process, through PostgreSQL: ``list``, ``show``, ``say`` (interject),
``stop``, ``resume`` (drive a session whose process died) and ``run`` (seed a pipeline run from the
summary). Ctrl-C asks the discussion to stop (the summary is still written); a second Ctrl-C, or
SIGTERM, leaves at once: the session is left as saved after its last message, for ``resume`` or a
``factory worker`` to finish (exit 130).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from factory.cli_common import (
    EXIT_INPUT,
    echo,
    err,
    load_settings,
    print_json,
    report,
    run_async,
    safe,
    show_progress,
    who_decides,
)
from factory.errors import InputError

if TYPE_CHECKING:
    from factory.settings import Settings
    from observability.base import Event
    from teams.groupchat import ChatEntry, GroupChats, GroupChatSession

EXIT_INTERRUPTED = 130


class _StartWithTeams(TyperGroup):
    """``factory groupchat --teams a,b TOPIC`` is ``factory groupchat start --teams a,b TOPIC``: with
    ``--teams`` the words are the topic, without it the first word is a subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a click Context (typer vendors click)
        if args and args[0] not in self.commands and any(a == "--teams" or a.startswith("--teams=") for a in args):
            args = ["start", *args]
        return super().parse_args(ctx, args)


groupchat_app = typer.Typer(
    cls=_StartWithTeams,
    no_args_is_help=True,
    help="Group chat: chosen teams discuss a topic, you in the room. "
    "`factory groupchat --teams a,b,c TOPIC` starts one; list, show, say, stop, resume, run.",
)

By = Annotated[str | None, typer.Option("--by", help="Who you are (default FACTORY_OPERATOR, else your user name).")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


# -- rendering (pure: from the domain models to lines) -------------------------------------------------


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


# -- commands ------------------------------------------------------------------------------------------


def _options(max_messages: int | None, max_in_a_row: int | None, timeout: float | None, tokens: int | None) -> Any:
    from pydantic import ValidationError

    from teams.groupchat import GroupChatOptions

    given = {"max_messages": max_messages, "max_consecutive": max_in_a_row, "timeout_s": timeout,
             "token_budget": tokens}  # fmt: skip
    flags = {"max_messages": "--max-messages", "max_consecutive": "--max-in-a-row", "timeout_s": "--timeout",
             "token_budget": "--token-budget"}  # fmt: skip
    try:
        return GroupChatOptions.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        err(f"{flags.get(str(first['loc'][0]), first['loc'][0])}: {first['msg']}", EXIT_INPUT)


@groupchat_app.command("start")
def start(
    topic: Annotated[list[str], typer.Argument(help="What the teams discuss ('-' reads stdin).")],
    teams: Annotated[str, typer.Option("--teams", help="2 to 8 team slugs, comma-separated.")],
    max_messages: Annotated[int | None, typer.Option(help="Team messages at most (12).")] = None,
    max_in_a_row: Annotated[int | None, typer.Option(help="Messages one team may send in a row (1).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds of discussion at most (900).")] = None,
    token_budget: Annotated[int | None, typer.Option(help="Tokens of every model call of it (60000).")] = None,
    as_json: Json = False,
    by: By = None,
) -> None:
    """Open a session and drive it here, printing the transcript as it happens, then the summary.
    Same as `factory groupchat --teams a,b,c TOPIC`."""
    from factory.cli_common import read_stdin
    from teams.groupchat.service import parse_teams

    settings = load_settings()
    words = " ".join(topic)
    text = read_stdin("topic", settings.max_requirement_bytes) if words == "-" else words
    if not text.strip():
        err("the topic is empty; write what the teams should discuss", EXIT_INPUT)
    try:
        slugs = parse_teams(teams)
    except InputError as exc:
        err(str(exc), exc.exit_code)
    options = _options(max_messages, max_in_a_row, timeout, token_budget)
    who = who_decides(settings, by)

    async def go(chats: GroupChats) -> GroupChatSession:
        return await chats.open(text, slugs, by=who, options=options)

    _drive_here(settings, go, as_json, who=who)


@groupchat_app.command("resume")
def resume(session_id: str, as_json: Json = False, by: By = None) -> None:
    """Continue a session whose process died (or that failed) from its last saved message, printing
    the rest of it as it happens."""

    async def go(chats: GroupChats) -> GroupChatSession:
        return await chats.get(session_id)

    settings = load_settings()
    _drive_here(settings, go, as_json, who=who_decides(settings, by), resumed=True)


def _drive_here(settings: Settings, opening: Any, as_json: bool, *, who: str, resumed: bool = False) -> None:
    """Open (or find) a session with ``opening`` and drive it in this process, watching it."""
    to_err = as_json  # with --json, stdout carries nothing but the JSON
    show = not as_json or sys.stderr.isatty()

    async def go() -> tuple[GroupChatSession, list[ChatEntry]] | GroupChatSession:
        import asyncio
        import signal

        from factory.wiring import group_chats, open_factory

        async with open_factory(settings) as factory:
            chats = group_chats(factory)
            session: GroupChatSession = await opening(chats)
            after = 0
            if show:
                for line in header_lines(session):
                    echo(line, err=to_err)
                lines = await chats.transcript(session.id) if resumed else []
                for entry in lines:
                    echo(entry_line(entry), err=to_err, lines=True)
                if not lines:
                    echo(entry_line({"kind": "topic", "source": session.created_by, "text": session.topic}),
                         err=to_err, lines=True)  # fmt: skip
                after = lines[-1].seq if lines else 0
                stream = (sys.stderr if to_err else sys.stdout).isatty()
                factory.bus.subscribe(Watcher(session.id, err=to_err, stream=stream, after_seq=after))
            driving = asyncio.create_task(chats.drive(session.id))
            loop = asyncio.get_running_loop()

            def interrupted() -> None:
                if session.id in asking or driving.done():
                    driving.cancel()  # a second Ctrl-C: leave it running, for resume
                    return
                asking.add(session.id)
                echo("(Ctrl-C: the discussion stops, then its summary is written; Ctrl-C again leaves at once)",
                     err=True)  # fmt: skip
                stopping.append(asyncio.create_task(chats.stop(session.id, by=who)))

            asking: set[str] = set()
            stopping: list[asyncio.Task[bool]] = []
            loop.add_signal_handler(signal.SIGINT, interrupted)
            loop.add_signal_handler(signal.SIGTERM, driving.cancel)
            try:
                ended = await driving
            except asyncio.CancelledError:
                if not driving.cancelled():
                    raise
                return await chats.get(session.id)
            finally:
                loop.remove_signal_handler(signal.SIGINT)
                loop.remove_signal_handler(signal.SIGTERM)
                await asyncio.gather(*stopping, return_exceptions=True)
            return ended, await chats.transcript(ended.id)

    result = run_async(go())
    if not isinstance(result, tuple):  # interrupted twice: the session goes on without this process
        echo(f"left group chat {result.id} before its end: `factory groupchat resume {result.id}` finishes it"
             " (a running `factory worker` does on its own)", err=True)  # fmt: skip
        raise typer.Exit(EXIT_INTERRUPTED)
    ended, transcript = result
    if as_json:
        print_json(session_json(ended, transcript))
    else:
        echo()
        for line in [*summary_lines(ended), "", status_line(ended), *hint_lines(ended)]:
            echo(line, lines=True)


@groupchat_app.command("list")
def list_sessions(
    status: Annotated[str | None, typer.Option(help="Only sessions running, ended or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many, newest first.")] = 20,
    as_json: Json = False,
) -> None:
    """The latest group-chat sessions, newest first."""
    from teams.groupchat import SessionStatus

    try:
        wanted = SessionStatus(status) if status is not None else None
    except ValueError:
        err(f"--status must be one of {', '.join(s.value for s in SessionStatus)}; got {status!r}", EXIT_INPUT)
    sessions = _with_chats(lambda chats: chats.recent(limit=limit, status=wanted))
    if as_json:
        print_json([session_json(s) for s in sessions])
        return
    if not sessions:
        echo("no group chats yet; start one with `factory groupchat --teams a,b TOPIC`")
    for s in sessions:
        why = s.stop_reason or ""
        topic = " ".join(s.topic.split())
        echo(f"{s.id}  {s.status.value:7} {why:12} {s.team_messages:3} msgs  {','.join(s.teams)}  "
             f"{topic[:60] + ('…' if len(topic) > 60 else '')}")  # fmt: skip


@groupchat_app.command("show")
def show(session_id: str, as_json: Json = False) -> None:
    """A session in full: status, stop reason, transcript, summary, the runs it seeded."""

    async def go(chats: GroupChats) -> tuple[GroupChatSession, list[ChatEntry]]:
        return await chats.get(session_id), await chats.transcript(session_id, limit=100_000)

    session, transcript = _with_chats(go)
    if as_json:
        print_json(session_json(session, transcript))
        return
    lines = [*header_lines(session), status_line(session)]
    if session.stop_requested_by:
        lines.append(f"  stop asked by {session.stop_requested_by}")
    lines += ["", *(entry_line(e) for e in transcript), ""]
    if session.status.value == "ended":
        lines += summary_lines(session)
    if session.run_ids:
        lines.append(f"runs seeded: {', '.join(session.run_ids)}")
    for line in [*lines, *hint_lines(session)]:
        echo(line, lines=True)


@groupchat_app.command("say")
def say(session_id: str, text: Annotated[list[str], typer.Argument(help="Your message.")], by: By = None) -> None:
    """Interject as the operator: the next team to speak hears it (from any process)."""
    settings = load_settings()
    who = who_decides(settings, by)
    queued = _with_chats(lambda chats: chats.interject(session_id, " ".join(text), by=who), settings)
    echo(f"queued for the next speaker of {session_id} (interjection {queued.id}, as {who})")


@groupchat_app.command("stop")
def stop(session_id: str, by: By = None) -> None:
    """End a session: its driver stops the discussion (cutting the message being written), then
    writes the summary."""
    settings = load_settings()
    who = who_decides(settings, by)

    async def go(chats: GroupChats) -> tuple[bool, GroupChatSession, bool]:
        asked = await chats.stop(session_id, by=who)
        return asked, await chats.get(session_id), session_id in await chats.orphaned()

    asked, session, undriven = _with_chats(go, settings)
    if not asked and session.status.value != "running":
        err(f"group chat {session_id} is not running ({session.status.value}); nothing to stop", EXIT_INPUT)
    echo(f"asked group chat {session_id} to stop" if asked else f"a stop of {session_id} was already asked for")
    if undriven:
        echo(f"nobody drives it now: `factory groupchat resume {session_id}` ends it and writes its summary"
             " (or a `factory worker` does)", err=True)  # fmt: skip


@groupchat_app.command("run")
def run(
    session_id: str,
    pipeline: Annotated[str, typer.Option(help="phase1, full, or comma-separated team slugs.")] = "phase1",
    detach: Annotated[bool, typer.Option("--detach", help="Queue the run for the workers and return.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
    by: By = None,
) -> None:
    """Run this as a requirement: a pipeline run whose requirement is the session's summary, driven
    here like `factory run`, or queued for the workers with --detach."""
    from factory.cli import announce_queued
    from teams.roster import resolve_pipeline

    settings = load_settings()
    try:
        _name, slugs = resolve_pipeline(pipeline)
    except InputError as exc:
        err(str(exc), EXIT_INPUT)
    who = who_decides(settings, by)

    async def go() -> Any:
        from factory.wiring import group_chats, open_factory, responders_for_run

        serve = () if detach else responders_for_run(settings)
        async with open_factory(settings, serve=serve) as factory:
            seeded = await group_chats(factory).to_requirement(session_id, by=who, pipeline=pipeline)
            if detach:
                await announce_queued(factory, settings, seeded, as_json)
                return None
            show_progress(factory, len(slugs), as_json)
            return await factory.engine.drive(seeded.id)

    outcome = run_async(go())
    if outcome is not None:
        report(outcome, as_json)


def _with_chats(go: Any, settings: Settings | None = None) -> Any:
    """Run ``go(chats)`` on an open factory (the session calls that drive nothing)."""
    settings = settings or load_settings()

    async def main() -> Any:
        from factory.wiring import group_chats, open_factory

        async with open_factory(settings) as factory:
            return await go(group_chats(factory))

    return run_async(main())
