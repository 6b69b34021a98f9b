"""The Chainlit app: profiles, live runs, decisions in chat. Loaded by ``chat.serve`` (not by hand).

Handlers only read the store, submit, decide and subscribe; nothing here drives a run or waits on
the operator (no ``Ask*`` message anywhere): a decision that needs text ("Answer", "Reject") is
remembered for the session and the operator's next message is that text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from datetime import UTC, datetime
from typing import Any

import chainlit as cl
from chainlit.input_widget import Select, TextInput

from chat import access, decisions, governance, groupchat, render
from chat.data_layer import data_layer as make_data_layer
from chat.guard import guarded
from chat.live import TERMINAL, RunView, element_id
from chat.runtime import runtime
from factory.errors import FactoryError
from hitl.attention import attention
from routing.base import Message
from teams.conversation import TeamConversation
from teams.slugs import ALL_TEAMS

log = logging.getLogger(__name__)

AUTH = os.environ.get("FACTORY_CHAT_AUTH", "local")  # set by chat.serve: "password" or "local"
LOCAL_USER = os.environ.get("FACTORY_CHAT_LOCAL_USER", "operator")
SAMPLE = os.environ.get(
    "FACTORY_CHAT_SAMPLE",
    "Build a URL shortener service with an HTTP API: create short links, redirect to the target, and count clicks.",
)
FRAME_S = 0.1  # at most ten redraws a second per run
ATTENTION = re.compile(r"^\s*(/attention|what needs my attention\??|what needs me\??)\s*$", re.IGNORECASE)
PROFILES = ("Pipeline", "Team chat", "Group chat", "Project Q&A", "Decisions")


# --- who is this ------------------------------------------------------------------------------

if AUTH == "password":

    @cl.password_auth_callback
    async def login(username: str, password: str) -> cl.User | None:
        await runtime.open()
        user = await access.verify(runtime.factory, username, password)
        if user is None:
            return None
        return cl.User(identifier=user.name, metadata={"role": user.role.value, "provider": "credentials"})

else:

    @cl.header_auth_callback
    async def local_login(headers: Any) -> cl.User | None:
        # chat.serve allows this only on a loopback address with no accounts: the person at this
        # machine is its operator.
        return cl.User(identifier=LOCAL_USER, metadata={"role": "operator", "provider": "local"})


@cl.data_layer
def chat_history() -> Any:
    return make_data_layer(runtime.database_url)


@cl.on_app_startup
async def started() -> None:
    await runtime.open()


@cl.on_app_shutdown
async def stopped() -> None:
    await runtime.close()


def user() -> cl.User:
    found = cl.user_session.get("user")
    if found is None:
        raise access.Refused("no user for this session: log in again")
    return found  # type: ignore[no-any-return]


# --- profiles and the first screen -------------------------------------------------------------


INTRO = {
    "Pipeline": "**Pipeline.** Type a requirement to run it through the teams, or try the sample below. The"
    " pipeline (phase1, full, or your own team list) is in the settings panel ⚙. `/attention` lists what"
    " waits on you.",
    "Team chat": "**Team chat.** Pick a team in the settings panel ⚙, then talk to it: it answers as itself,"
    " from its memory, on its model alias.",
    "Group chat": groupchat.INTRO,
    "Project Q&A": "**Project Q&A.** Ask what the factory knows about past runs; answers cite their sources.",
    "Decisions": "**Decisions.** Everything waiting on a human, most urgent first.",
}
ICONS = {"Pipeline": "pipeline", "Team chat": "team", "Group chat": "team", "Project Q&A": "qa",
         "Decisions": "decisions"}  # fmt: skip


@cl.set_chat_profiles
async def profiles(current_user: cl.User | None = None, language: str | None = None) -> list[cl.ChatProfile]:
    """The first screen: each profile's icon and description (with the model notice), and starters."""
    await runtime.open()
    notice = await model_notice()
    viewer = (
        "\n\nYou are signed in as a **viewer**: you can watch runs, not decide or change settings."
        if current_user is not None and access.role_of(current_user) != "operator"
        else ""
    )
    waiting = await runtime.factory.escalations.list_open()
    needs = (
        f"\n\n**{len(waiting)} escalation{'s' * (len(waiting) != 1)} wait{'s' * (len(waiting) == 1)} on you**"
        " — open *Decisions* or type `/attention`."
        if waiting
        else ""
    )
    extra = needs + viewer + (f"\n\n{notice}" if notice else "")
    attention_starter = cl.Starter(label="What needs my attention?", message="/attention")
    starters = {
        "Pipeline": [
            cl.Starter(label="Try the sample requirement", message=SAMPLE),
            attention_starter,
            cl.Starter(label="Costs of the last 10 runs", message="/costs 10"),
        ],
        "Decisions": [attention_starter, cl.Starter(label="Costs of the last 10 runs", message="/costs 10")],
        "Group chat": groupchat.STARTERS,
    }
    return [
        cl.ChatProfile(
            name=name,
            markdown_description=INTRO[name] + extra,
            icon=f"/public/{ICONS[name]}.svg",
            default=name == "Pipeline",
            starters=starters.get(name),
        )
        for name in PROFILES
    ]


async def model_notice() -> str | None:
    """Said plainly on the first screen when only an in-process model serves the chat aliases."""
    config = await runtime.factory.routing.current()
    chains = [config.chain(alias) for alias in ("factory/architect", "factory/coder", "factory/fast", "factory/cheap")]
    if all(all(d.local and not d.api_base for d in chain) for chain in chains):
        return (
            "⚠️ **Only an embedded model serves this factory**"
            f" ({render.code(runtime.factory.model_description)}). Its artifacts are for trying the factory, not"
            " for use. Route a real model with"
            " `factory routing set factory/coder MODEL` (an API key: `factory secrets set NAME`)."
        )
    return None


@cl.on_chat_start
async def chat_start() -> None:
    """Nothing is said first (the welcome screen shows the profile and its starters), but in
    Decisions, which opens on the list."""
    await runtime.open()
    profile = cl.user_session.get("chat_profile") or "Pipeline"
    cl.user_session.set("views", {})
    cl.user_session.set("pending", None)
    await send_settings(profile)
    start_follower()
    if profile == "Decisions":
        await show_attention()


async def send_settings(profile: str) -> None:
    """The settings panel: the pipeline to run (Pipeline), the team (Team chat), and in Pipeline the
    factory's governance too (model chains, API keys, run policy: see ``chat.governance``)."""
    widgets: list[Any] = []
    shown: dict[str, str] = {}
    if profile == "Pipeline":
        widgets += [
            Select(id="pipeline", label="Pipeline", values=["phase1", "full", "custom"], initial_value="phase1",
                   description="phase1: 5 teams · full: all 17 · custom: the teams listed below"),
            TextInput(id="teams", label="Custom teams (comma separated, in order)", initial="",
                      placeholder="business-analysis,solution-architecture,backend-engineering"),
        ]  # fmt: skip
        more, shown = await governance.widgets(runtime.factory)
        widgets += more
    if profile == "Team chat":
        widgets.append(Select(id="team", label="Team", values=list(ALL_TEAMS), initial_value=ALL_TEAMS[0]))
    if profile == "Group chat":
        widgets += groupchat.widgets()
    if profile == "Project Q&A":
        widgets.append(TextInput(id="run", label="Only this run (its id; empty: the whole factory)", initial=""))
    cl.user_session.set("shown", shown)
    if widgets:
        cl.user_session.set("settings", await cl.ChatSettings(widgets).send())


@cl.on_settings_update
async def settings_update(values: dict[str, Any]) -> None:
    # The key leaves the session at once: Chainlit would otherwise keep it in the thread's metadata.
    secret = governance.wipe_secret(values, cl.context.session.chat_settings)
    cl.user_session.set("settings", values)
    shown: dict[str, str] = cl.user_session.get("shown") or {}
    if not shown or not governance.governance_changed(values, shown, secret):
        return
    profile = cl.user_session.get("chat_profile") or "Pipeline"
    try:
        access.require(user(), "settings")
    except access.Refused as exc:
        await cl.ErrorMessage(content=f"Refused: {exc}").send()
        await send_settings(profile)  # back to what is in force
        return
    done = await governance.apply(runtime.factory, values, shown, secret, by=user().identifier)
    lines = [f"- {render.inert(line)}" for line in done.changed] + [
        f"- **refused:** {render.inert(r)}" for r in done.refused
    ]
    tail = "\n\nNew runs use these settings; runs already started keep theirs." if done.changed else ""
    text = "**Settings.**\n" + "\n".join(lines) + tail
    await (cl.ErrorMessage(content=text) if done.refused and not done.changed else cl.Message(content=text)).send()
    await send_settings(profile)  # the panel shows what is now in force (and no key)


# --- live updates --------------------------------------------------------------------------------


def start_follower() -> None:
    previous = cl.user_session.get("follower")
    if previous is not None and not previous.done():
        return
    cl.user_session.set("follower", asyncio.create_task(following(cl.context.session.id)))


async def following(session_id: str) -> None:
    try:
        await follow(session_id)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the live view of session %s stopped", session_id)


def session_alive(session_id: str) -> bool:
    from chainlit.session import WebsocketSession

    return WebsocketSession.get_by_id(session_id) is not None


async def follow(session_id: str) -> None:
    """This session's live view: redraw the runs it shows when their events arrive (at most one
    redraw per run per frame), and bring any new escalation of any run to this operator."""
    loop = asyncio.get_running_loop()
    async with runtime.subscription() as sub:
        while session_alive(session_id):
            # The first event after a quiet spell is drawn at once; in a burst, at most one redraw
            # per frame (what arrives meanwhile is drawn together in the next).
            events = await sub.batch(wait_s=1.0, linger_s=0.0)
            started = loop.time()
            views: dict[str, RunView] = cl.user_session.get("views") or {}
            touched = {e.run_id for e in events} & set(views)
            lost, sub.overflowed = sub.overflowed, False
            if lost:  # events were dropped: redraw everything from the store
                touched = set(views)
            await groupchat.on_events(events, lost=lost)
            for run_id in touched:
                try:
                    await views[run_id].draw()
                except Exception:
                    log.exception("redrawing run %s failed", run_id)
            for event in events:
                if event.type == "escalation.opened" and event.run_id not in views:
                    await announce(event.data.get("id", ""))
            if events:
                await asyncio.sleep(max(0.0, FRAME_S - (loop.time() - started)))


async def announce(escalation_id: str) -> None:
    """A new escalation in a run this session does not show: a card with its buttons."""
    e = await runtime.factory.escalations.get(escalation_id)
    if e is None or not e.waiting:
        return
    from chat.live import decision_actions

    await cl.Message(
        content=f"New in run {render.code(e.run_id)}:\n\n{render.escalation_card(e)}",
        id=element_id(cl.context.session.thread_id, "announce", e.id),
        actions=decision_actions(e, access.role_of(user())),
    ).send()


async def watch(run_id: str, known: set[str] | None = None) -> RunView:
    views: dict[str, RunView] = cl.user_session.get("views") or {}
    view = views.get(run_id) or RunView(
        run_id, cl.context.session.thread_id, access.role_of(user()), known=known or set()
    )
    views[run_id] = view
    cl.user_session.set("views", views)
    await view.draw()
    return view


groupchat.watch_run = watch  # a run started from a group chat's summary is shown in its thread


@cl.on_chat_resume
async def chat_resume(thread: Any) -> None:  # a ThreadDict
    """Reopening a thread: its runs are redrawn from the store, then follow live."""
    await runtime.open()
    cl.user_session.set("views", {})
    cl.user_session.set("pending", None)
    metadata = thread.get("metadata") or {}
    profile = metadata.get("chat_profile") or "Pipeline"
    cl.user_session.set("chat_profile", profile)
    await send_settings(profile)
    known = {str(step.get("id")) for step in thread.get("steps") or []}
    start_follower()
    runs = [str(r) for r in metadata.get("runs") or []]
    cl.user_session.set("runs", runs)  # a run submitted here later is added to them, not in their place

    async def redraw() -> None:  # after the resume handler returned (messages sent inside it can vanish)
        await asyncio.sleep(0.3)
        for run_id in runs:
            try:
                await watch(run_id, known)
            except Exception:
                log.exception("reopening run %s in thread %s failed", run_id, thread.get("id"))

    asyncio.create_task(redraw())
    groupchat.reopen(thread, known)  # its group chats, likewise


# --- messages ------------------------------------------------------------------------------------


@cl.on_message
async def on_message(message: cl.Message) -> None:
    text = (message.content or "").strip()
    try:
        pending = cl.user_session.get("pending")
        if pending is not None and not text.startswith("/"):
            cl.user_session.set("pending", None)
            await decide(pending["action"], pending["id"], pending.get("version"), text)
            return
        if text == "/cancel":
            cl.user_session.set("pending", None)
            await cl.Message(content="Nothing is waiting for your text now.").send()
            return
        if ATTENTION.match(text):
            await show_attention()
            return
        if text.startswith("/"):
            await command(text)
            return
        profile = cl.user_session.get("chat_profile") or "Pipeline"
        if profile == "Project Q&A":
            await ask_project(text)
        elif profile == "Team chat":
            await team_chat(text)
        elif profile == "Group chat":
            await groupchat.on_message(text)
        elif profile == "Decisions":
            await cl.Message(content="In Decisions, use the buttons, or `/attention` to list again.").send()
        else:
            await submit(text)
    except access.Refused as exc:
        await cl.ErrorMessage(content=f"Refused: {exc}").send()
    except FactoryError as exc:
        await cl.ErrorMessage(content=render.inert(str(exc))).send()


async def submit(requirement: str) -> None:
    access.require(user(), "run")
    settings = cl.user_session.get("settings") or {}
    pipeline = settings.get("pipeline") or "phase1"
    if pipeline == "custom":
        pipeline = (settings.get("teams") or "").strip()
        if not pipeline:
            raise access.Refused("the custom pipeline has no teams: list them in the settings panel ⚙")
    run = await runtime.submit(requirement, pipeline, by=str(user().identifier))
    thread_id = cl.context.session.thread_id
    runs = [*(cl.user_session.get("runs") or []), run.id]
    cl.user_session.set("runs", runs)
    with contextlib.suppress(Exception):  # history is a convenience: the run exists either way
        layer = cl.data.get_data_layer()
        if layer is not None:
            await layer.update_thread(thread_id, metadata={"runs": runs})
    await watch(run.id)


async def command(text: str) -> None:
    parsed = decisions.parse_command(text)
    if parsed is not None:
        await decide(parsed[0], parsed[1], None, parsed[2])
        return
    parts = text.split(maxsplit=1)
    name, arg = parts[0].lower(), (parts[1].strip() if len(parts) > 1 else "")
    if name == "/verify" and arg:
        await verify(arg)
    elif await groupchat.command(name, arg):
        pass
    elif name == "/watch" and arg:
        await watch(arg)
    elif name == "/costs":
        await costs(int(arg) if arg.isdigit() else 10)
    else:
        await cl.Message(
            content="Commands: `/attention` · `/answer ID TEXT` · `/approve ID [NOTES]` · `/reject ID REASON` ·"
            " `/defer ID` · `/verify RUN` · `/watch RUN|GROUPCHAT` · `/groupchats` · `/costs [N]` · `/cancel`"
        ).send()


# --- decisions -----------------------------------------------------------------------------------


async def show_attention() -> None:
    f = runtime.factory
    waiting = await f.escalations.list_open()
    att = attention(waiting, f.desk.policy, datetime.now(UTC))
    low = [i.escalation.id for i in att.items if f.desk.low_risk.refusal(i.escalation) is None]
    deciding = access.role_of(user()) == "operator"  # a viewer gets no decision buttons (nor could use one)
    actions = [
        cl.Action(name="decide_approve", payload={"id": i.escalation.id, "version": i.escalation.version},
                  label=f"Approve {i.escalation.id}")
        for i in att.items if i.escalation.id in low and deciding
    ][:10]  # fmt: skip
    actions += [
        cl.Action(name="show_escalation", payload={"id": i.escalation.id}, label=f"Open {i.escalation.id}")
        for i in att.items[:10]
    ]
    if len(low) > 1 and deciding:
        actions.append(cl.Action(name="batch_approve", payload={"ids": low}, label=f"Approve all {len(low)} low-risk"))
    await cl.Message(content=render.attention_markdown(att, low), actions=actions).send()


@cl.action_callback("show_escalation")
async def show_escalation(action: cl.Action) -> None:
    from chat.live import decision_actions

    e = await runtime.factory.escalations.get(str(action.payload.get("id", "")))
    if e is None:
        await cl.ErrorMessage(content="No such escalation.").send()
        return
    actions = decision_actions(e, access.role_of(user())) if e.waiting else []
    await cl.Message(content=render.escalation_card(e), actions=actions).send()


@cl.action_callback("decide_answer")
async def on_answer(action: cl.Action) -> None:
    await ask_for_text(action, "answer", "your answer")


@cl.action_callback("decide_reject")
async def on_reject(action: cl.Action) -> None:
    await ask_for_text(action, "reject", "the reason (required: the team gets it as feedback)")


@cl.action_callback("decide_approve")
async def on_approve(action: cl.Action) -> None:
    await guarded(decide("approve", str(action.payload.get("id")), action.payload.get("version"), None))


@cl.action_callback("decide_defer")
async def on_defer(action: cl.Action) -> None:
    await guarded(decide("defer", str(action.payload.get("id")), action.payload.get("version"), None))


@cl.action_callback("batch_approve")
async def on_batch(action: cl.Action) -> None:
    async def go() -> None:
        access.require(user(), "decide")
        ids = [str(i) for i in action.payload.get("ids") or []]
        outcome = await runtime.factory.desk.batch_approve(ids, by=user().identifier)
        lines = [f"Approved {len(outcome.approved)}."] + [
            f"- {render.code(i)} not approved: {render.inert(why)}" for i, why in outcome.refused
        ]
        await cl.Message(content="\n".join(lines)).send()
        for run_id in {e.run_id for e in outcome.approved}:
            await continue_run(run_id)

    await guarded(go())


async def ask_for_text(action: cl.Action, kind: str, what: str) -> None:
    async def go() -> None:
        access.require(user(), "decide")
        ident = str(action.payload.get("id", ""))
        cl.user_session.set("pending", {"action": kind, "id": ident, "version": action.payload.get("version")})
        await cl.Message(content=f"Type {what} for {render.code(ident)} as your next message (or `/cancel`).").send()

    await guarded(go())


async def decide(kind: str, escalation_id: str, version: Any, text: str | None) -> None:
    """One decision through the desk (who and which version are checked there), then the run moves."""
    decided = await decisions.decide(runtime.factory.desk, user(), kind, escalation_id, version, text)
    await cl.Message(content=f"{render.code(decided.id)}: {render.decision_line(decided)}").send()
    if not decided.waiting:
        await continue_run(decided.run_id)


async def continue_run(run_id: str) -> None:
    f = runtime.factory
    if await f.escalations.list_open(run_id):
        return
    run = await f.store.get_run(run_id)
    if run is not None and run.status not in TERMINAL:
        await runtime.nudge(run_id)
    views: dict[str, RunView] = cl.user_session.get("views") or {}
    if run_id in views:
        await views[run_id].draw()


@cl.action_callback("verify_audit")
async def on_verify(action: cl.Action) -> None:
    await guarded(verify(str(action.payload.get("run_id", ""))))


async def verify(run_id: str) -> None:
    from teams.snapshot import verify_run

    f = runtime.factory
    run = await f.store.get_run(run_id)
    if run is None:
        raise access.Refused(f"no run {run_id!r}")
    report = await verify_run(f.audit, run)
    state = "✅ intact" if report.intact else "❌ **TAMPERED**"
    problems = "\n".join(f"- {render.inert(p)}" for p in report.problems)
    await cl.Message(
        content=f"Audit of {render.code(run_id)}: {state}, {report.entries} entries, head"
        f" {render.code(report.head_sha256)}" + (f"\n{problems}" if problems else "")
    ).send()


# --- the other profiles --------------------------------------------------------------------------


async def ask_project(question: str) -> None:
    run_id = str((cl.user_session.get("settings") or {}).get("run") or "").strip() or None
    if run_id is not None and await runtime.factory.store.get_run(run_id) is None:
        raise access.Refused(f"no run {run_id!r}: clear the run in the settings panel ⚙ to ask the whole factory")
    answer = await runtime.factory.qa.ask(question, run_id=run_id)
    cites = "\n".join(
        f"{c.number}. {render.inert(c.source)} ({render.inert(c.bank)}, {render.inert(c.kind)}"
        f"{', run ' + render.inert(c.run_id) if c.run_id else ''}): {render.inert(c.excerpt, 300)}"
        for c in answer.citations
    )
    body = render.inert(answer.text, 6000) + (f"\n\n**Sources**\n{cites}" if cites else "\n\n(no sources found)")
    await cl.Message(content=body, author=f"factory ({answer.answered_by})").send()


async def team_chat(text: str) -> None:
    """Talk to the team chosen in the settings panel; its reply streams in as it is written (as
    inert text: a team's output never acts in the page)."""
    access.require(user(), "chat")
    f = runtime.factory
    slug = (cl.user_session.get("settings") or {}).get("team") or ALL_TEAMS[0]
    histories: dict[str, list[Any]] = cl.user_session.get("team_history") or {}
    conversation = TeamConversation(f.model, f.memory.gateway, timeout_s=f.settings.model_timeout_s)
    reply = cl.Message(content="", author=slug)
    final = None
    try:
        async for item in conversation.reply(slug, histories.get(slug, []), text, by=user().identifier):
            if isinstance(item, str):
                await reply.stream_token(render.inert(item))
            else:
                final = item
    except FactoryError as exc:
        await reply.stream_token(f"\n\n**The answer broke off:** {render.inert(exc)}")
    if final is not None:
        histories[slug] = [*histories.get(slug, []), Message(role="user", content=text),
                           Message(role="assistant", content=final.text)][-24:]  # fmt: skip
        cl.user_session.set("team_history", histories)
        reply.content += (
            f"\n\n*{render.inert(final.model)} · {final.tokens_in:,} in / {final.tokens_out:,} out ·"
            f" {render.money(final.cost_usd)} · kept in {render.inert(slug)}'s memory*"
        )
    await reply.send()


async def costs(last: int) -> None:
    f = runtime.factory
    runs = await f.store.recent_runs(limit=max(1, min(last, 100)))
    stages = [s for run in runs for s in await f.store.stages(run.id)]
    rows = render.usage_by_team(stages)
    figure = render.usage_figure(rows, f"Tokens and cost by team (last {len(runs)} runs)")
    await cl.Message(
        content=render.usage_table(rows),
        elements=[cl.Plotly(name="costs", figure=figure, display="inline", size="large")],
    ).send()
