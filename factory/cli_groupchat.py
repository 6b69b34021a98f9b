"""``factory groupchat``: chosen teams discuss a topic, the operator in the room (DESIGN §2 E).

``factory groupchat --teams a,b,c TOPIC`` opens a session and drives it in this process, printing the
transcript as it happens (on a terminal each team's message streams in as it is written; otherwise
each message is printed whole once stored), then the summary and the session id. Every other
subcommand works from any process, through PostgreSQL: ``list``, ``show``, ``say`` (interject),
``stop``, ``resume`` (drive a session whose process died; one that another process drives, a worker
say, is followed instead) and ``run`` (seed a pipeline run from the summary). Ctrl-C asks the
discussion to stop (the summary is still written); a second Ctrl-C, or SIGTERM, leaves at once: the
session is left as saved after its last message, for ``resume`` or a ``factory worker`` to finish
(exit 130).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from factory.cli_common import (
    EXIT_FAILED,
    EXIT_INPUT,
    echo,
    err,
    load_settings,
    print_json,
    report,
    run_async,
    show_progress,
    who_decides,
)
from factory.cli_groupchat_render import (
    Watcher,
    entry_line,
    header_lines,
    hint_lines,
    session_json,
    status_line,
    summary_lines,
)
from factory.errors import InputError

if TYPE_CHECKING:
    from factory.settings import Settings
    from factory.wiring import Factory
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
    """Open a session and drive it here, printing it as it happens, then the summary (= `groupchat --teams …`)."""
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
    """Continue a session whose process died (or that failed) from its last message; follow one driven elsewhere."""

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
                watcher = Watcher(session.id, err=to_err, stream=stream, after_seq=after)
                factory.bus.subscribe(watcher)
            driving = asyncio.create_task(_drive_or_follow(factory, chats, session, watcher if show else None))
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
        summary = summary_lines(ended) if ended.status.value == "ended" else []
        for line in [*summary, "", status_line(ended), *hint_lines(ended)]:
            echo(line, lines=True)
    if ended.status.value != "ended":  # failed in another process, or still going after following it
        raise typer.Exit(EXIT_FAILED)


#: Times ``_drive_or_follow`` tries to drive a session another process held (each followed to its end,
#: or until that process left it).
DRIVE_ATTEMPTS = 3


async def _drive_or_follow(
    factory: Factory, chats: GroupChats, session: GroupChatSession, watcher: Watcher | None
) -> GroupChatSession:
    """Drive the session here; while another process drives it (a worker took it over), follow its
    live events instead, and drive it if that process leaves it unfinished."""
    from factory.errors import RunBusy

    for attempt in range(DRIVE_ATTEMPTS):
        try:
            return await chats.drive(session.id)
        except RunBusy:
            if attempt == DRIVE_ATTEMPTS - 1:
                raise
        echo(f"(group chat {session.id} is driven by another process: following it)", err=True)
        followed = await _follow(factory, chats, session, watcher)
        if followed is not None:
            return followed
    raise AssertionError("not reached")


async def _follow(
    factory: Factory, chats: GroupChats, session: GroupChatSession, watcher: Watcher | None
) -> GroupChatSession | None:
    """The session's live events from its Redis stream, to ``watcher``, until it is no longer running
    (then the session), or nobody drives it any more (None); at most its time left, and ten minutes."""
    import time

    from observability.redis_stream import tail_events
    from teams.groupchat import SessionStatus

    deadline = time.monotonic() + max(0.0, session.options.timeout_s - session.elapsed_s) + 600
    key = factory.stream.run_stream(session.id)
    latest = await factory.redis.xrevrange(key, count=1)
    start = latest[0][0].decode() if latest else "0-0"
    if watcher is not None:  # what was said since this process looked, then what is said from now on
        watcher.whole_messages()
        for entry in await chats.transcript(session.id, after_seq=watcher.last_seq):
            watcher.entry(entry)
    async for _last, events in tail_events(factory.redis, key, start=start):
        for event in events:
            if watcher is not None:
                watcher(event)
        if events and not any(e.type in ("groupchat.ended", "groupchat.failed") for e in events):
            continue
        now = await chats.get(session.id)
        if now.status is not SessionStatus.RUNNING or time.monotonic() > deadline:
            return now
        if session.id in await chats.orphaned():
            return None
    return None


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
    """End a session: its driver cuts the message being written, then writes the summary."""
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
    """Run this as a requirement: a pipeline run from the summary, driven here like `factory run` (or --detach)."""
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
