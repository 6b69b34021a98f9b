"""The *Group chat* profile (DESIGN §2 E): the operator picks teams and a topic, watches each team's
message stream in under its name, interjects, stops, and turns the outcome into a pipeline run.

A session lives in ``teams.groupchat`` (PostgreSQL) and is driven by a worker or by a task of the chat
process (``runtime.nudge_session``), never in a socket handler: a closed tab ends nothing. A thread
only remembers which sessions it shows (its metadata ``groupchats``); each is drawn from the store by
a ``chat.groupchat_view.SessionView`` that the session's live events (``groupchat.*``, keyed by the
session id, through the app's follower) keep current. Here: the settings panel, who may do what, and
the operator's acts (open, interject, stop, seed a run, resume, watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import chainlit as cl
from chainlit.input_widget import InputWidget, MultiSelect, NumberInput
from pydantic import ValidationError

from chat import access, render
from chat import groupchat_render as show
from chat.groupchat_view import SessionView, button
from chat.guard import guarded
from chat.runtime import runtime
from factory.errors import InputError
from observability.base import Event
from teams.groupchat.base import MAX_TEAMS, MIN_TEAMS, GroupChatOptions, SessionStatus
from teams.slugs import ALL_TEAMS

log = logging.getLogger(__name__)

DEFAULT_TEAMS = ["solution-architecture", "backend-engineering", "security-engineering"]
INTRO = (
    "**Group chat.** Teams discuss a topic with you in the room. Choose 2 to 8 teams in the settings panel ⚙"
    f" (now: {', '.join(DEFAULT_TEAMS)}), then type the topic or pick a starter. Each team's message"
    " streams in under its name; **type at any time to interject** (the next team to speak hears you);"
    " **Stop** ends it. At the end: a summary (decisions, open questions, who argued what) and **Run this"
    " as a requirement**. `/groupchats` lists sessions; `/watch gc-…` follows one here."
)
STARTERS = [
    cl.Starter(
        label="Monolith or services?",
        message="Should the URL shortener be one service or several? Weigh delivery speed, operability and"
        " security, and say CONSENSUS when you agree.",
    ),
    cl.Starter(
        label="Release go/no-go",
        message="Is the URL shortener ready to release this week? Decide go or no-go and name the risks.",
    ),
    cl.Starter(label="Recent group chats", message="/groupchats"),
]

#: Set by the app: shows a pipeline run in this thread and follows it (``app.watch``).
watch_run: Callable[[str], Awaitable[Any]] | None = None


def widgets() -> list[InputWidget]:
    """The profile's settings panel: the teams and how long they may talk."""
    return [
        MultiSelect(id="gc_teams", label=f"Teams ({MIN_TEAMS} to {MAX_TEAMS})", values=list(ALL_TEAMS),
                    initial=list(DEFAULT_TEAMS),
                    description="Who discusses the next topic you type (a running discussion keeps its teams)"),
        NumberInput(id="gc_max_messages", label="Team messages at most", initial=12,
                    description="The discussion ends after this many team messages (1 to 200)"),
    ]  # fmt: skip


# --- who may do what ------------------------------------------------------------------------------


def operator(what: str) -> str:
    """The operator's name, or ``Refused`` for a viewer (checked here, on the server, for every act)."""
    user = cl.user_session.get("user")
    if access.role_of(user) != "operator":
        name = getattr(user, "identifier", "this account")
        raise access.Refused(
            f"{name} is a viewer and cannot {what}; an operator account can (`factory users add NAME --role operator`)"
        )
    return str(user.identifier)


def viewer() -> bool:
    return access.role_of(cl.user_session.get("user")) != "operator"


# --- the session's state in this chat session -------------------------------------------------------


# Chainlit keeps the user session in the thread's metadata when a socket drops and gives it back on
# resume, with what JSON cannot hold turned into nulls: only values of the right type count.


def _views() -> dict[str, SessionView]:
    views = cl.user_session.get("gc_views")
    if not isinstance(views, dict) or not all(isinstance(v, SessionView) for v in views.values()):
        views = {}
        cl.user_session.set("gc_views", views)
    return views


def _typed() -> set[str]:
    typed = cl.user_session.get("gc_typed")
    if not isinstance(typed, set):
        typed = set()
        cl.user_session.set("gc_typed", typed)
    return typed


def _current() -> SessionView | None:
    return _views().get(cl.user_session.get("gc_current") or "")


async def _remember(key: str, ident: str) -> None:
    """Add ``ident`` to the thread's ``key`` list (session and metadata), so reopening it shows it again."""
    listed = [*(cl.user_session.get(key) or []), ident]
    cl.user_session.set(key, listed)
    with contextlib.suppress(Exception):  # history is a convenience: the session exists either way
        layer = cl.data.get_data_layer()
        if layer is not None:
            await layer.update_thread(cl.context.session.thread_id, metadata={key: listed})


async def follow(session_id: str, known: set[str] | None = None) -> SessionView:
    """Show the session in this thread from the store, then follow its events (``on_events``)."""
    views = _views()
    view = views.get(session_id)
    if view is None:
        view = SessionView(session_id, cl.context.session.thread_id, viewer(), _typed(), known or set())
        views[session_id] = view
    cl.user_session.set("gc_current", session_id)
    await view.catch_up()
    return view


async def on_events(events: Sequence[Event], *, lost: bool = False) -> None:
    """The follower's batch of live events (``lost``: some were dropped, so every view rereads the store)."""
    views = _views()
    touched: dict[str, list[Event]] = {}
    for event in events:
        if event.run_id in views and event.type.startswith("groupchat."):
            touched.setdefault(event.run_id, []).append(event)
    for session_id in set(views) if lost else set():
        touched.setdefault(session_id, []).append(Event(type="groupchat.lost", run_id=session_id, at=datetime.now(UTC)))
    for session_id, batch in touched.items():
        try:
            await views[session_id].apply(batch)
        except Exception:
            log.exception("showing group chat %s failed", session_id)


# --- what the operator does ---------------------------------------------------------------------------


async def on_message(text: str) -> None:
    """A message in the profile: an interjection while the thread's session runs, else a new topic."""
    current = _current()
    if current is not None and not current.ended:
        await interject(current, text)
    else:
        await open_discussion(text)


async def open_discussion(topic: str) -> None:
    by = operator("open a group chat")
    settings = cl.user_session.get("settings") or {}
    teams = settings.get("gc_teams")
    teams = list(DEFAULT_TEAMS) if teams is None else [str(t) for t in teams]
    try:
        options = GroupChatOptions(max_messages=int(float(settings.get("gc_max_messages") or 12)))
    except (ValueError, ValidationError):
        await _retry(
            topic, "Team messages at most must be a whole number from 1 to 200: fix it in the settings panel ⚙."
        )
        return
    try:
        session = await runtime.chats.open(topic, teams, by=by, options=options)
    except InputError as exc:
        await _retry(topic, f"{exc}. Choose the teams in the settings panel ⚙ (now: {', '.join(teams) or 'none'}).")
        return
    _typed().add(session.topic)
    await _remember("groupchats", session.id)
    await follow(session.id)
    await runtime.nudge_session(session.id)


async def _retry(topic: str, why: str) -> None:
    """Bad input: say what and how to fix it; the topic stays one click away."""
    await _error(f"No discussion started: {render.inert(why)}", topic, "Start it with the teams now chosen")


async def _error(text: str, topic: str, label: str) -> None:
    """An error in the chat, with a button that opens a discussion of ``topic`` (nothing typed is lost)."""
    said = await cl.ErrorMessage(content=text).send()
    if topic.strip():
        await button("groupchat_open", label, "message-square-plus", topic=topic).send(for_id=said.id)


async def interject(view: SessionView, text: str) -> None:
    by = operator("interject in a group chat")
    text = text.strip()
    view.typed.add(text)
    try:
        await runtime.chats.interject(view.session_id, text, by=by)
    except InputError as exc:
        view.typed.discard(text)
        await view.catch_up()
        await _error(f"Not heard: {render.inert(exc)}. Your message is kept above.", text, "Discuss it as a new topic")


async def command(name: str, arg: str) -> bool:
    """``/groupchats`` and ``/watch gc-…`` (True when it was one of them)."""
    if name == "/groupchats":
        sessions = await runtime.chats.recent(limit=15)
        actions = [button("groupchat_watch", f"Watch {s.id}", "eye", id=s.id) for s in sessions[:5]]
        await cl.Message(content=show.listing(sessions), actions=actions).send()
        return True
    if name == "/watch" and arg.startswith("gc-"):
        await _watch(arg)
        return True
    return False


async def _watch(session_id: str) -> None:
    session = await runtime.chats.get(session_id)  # RunNotFound: said in the chat
    if session_id not in (cl.user_session.get("groupchats") or []):
        await _remember("groupchats", session_id)
    await follow(session_id)
    if session.status is SessionStatus.RUNNING and session_id in await runtime.chats.orphaned():
        await runtime.nudge_session(session_id)  # its driver died: a worker, or this process, resumes it


def reopen(thread: dict[str, Any], known: set[str]) -> None:
    """A reopened thread: its sessions are redrawn from the store (after the resume handler returned:
    messages sent inside it can vanish), then followed; an unattended one is driven again."""
    ids = [str(i) for i in (thread.get("metadata") or {}).get("groupchats") or []]
    cl.user_session.set("groupchats", ids)
    cl.user_session.set("gc_views", {})
    cl.user_session.set("gc_current", None)
    cl.user_session.set("gc_typed", None)
    typed = _typed()
    typed.update(
        str(s.get("output") or "").strip() for s in thread.get("steps") or [] if s.get("type") == "user_message"
    )
    if not ids:
        return

    async def redraw() -> None:
        await asyncio.sleep(0.3)
        for session_id in ids:
            try:
                await follow(session_id, known)
                session = await runtime.chats.get(session_id)
                if session.status is SessionStatus.RUNNING and session_id in await runtime.chats.orphaned():
                    await runtime.nudge_session(session_id)
            except Exception:
                log.exception("reopening group chat %s in thread %s failed", session_id, thread.get("id"))

    asyncio.create_task(redraw())


@cl.action_callback("groupchat_stop")
async def on_stop(action: cl.Action) -> None:
    async def go() -> None:
        session_id = str(action.payload.get("id", ""))
        asked = await runtime.chats.stop(session_id, by=operator("stop a group chat"))
        if not asked:
            await cl.Message(
                content=f"{render.code(session_id)} is not running, or a stop was already asked for."
            ).send()
        view = _views().get(session_id)
        if view is not None:
            await view.catch_up()

    await guarded(go())


@cl.action_callback("groupchat_seed")
async def on_seed(action: cl.Action) -> None:
    async def go() -> None:
        session_id = str(action.payload.get("id", ""))
        by = operator("start a pipeline run")
        run = await runtime.chats.to_requirement(session_id, by=by)
        await _remember("runs", run.id)  # the thread shows the run (and shows it again when reopened)
        view = _views().get(session_id)
        if view is not None:
            await view.seeded(run.id, by)
        await runtime.nudge(run.id)
        if watch_run is not None:
            await watch_run(run.id)

    await guarded(go())


@cl.action_callback("groupchat_resume")
async def on_resume(action: cl.Action) -> None:
    async def go() -> None:
        session_id = str(action.payload.get("id", ""))
        operator("resume a group chat")
        await runtime.nudge_session(session_id)
        await cl.Message(content=f"Resuming {render.code(session_id)} from its last message.").send()

    await guarded(go())


@cl.action_callback("groupchat_open")
async def on_open(action: cl.Action) -> None:
    await guarded(open_discussion(str(action.payload.get("topic", ""))))


@cl.action_callback("groupchat_watch")
async def on_watch(action: cl.Action) -> None:
    await guarded(_watch(str(action.payload.get("id", ""))))
