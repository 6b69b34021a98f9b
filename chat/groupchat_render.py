"""What the *Group chat* profile shows, as Markdown from the session's records (no Chainlit here, so it
is unit-tested alone). Everything a team or an operator wrote goes through ``render.inert``."""

from __future__ import annotations

from collections.abc import Sequence

from chat.render import bullets, code, inert
from teams.groupchat.base import ChatEntry, GroupChatSession, GroupChatSummary, SessionStatus
from teams.roster import team

HOW = {
    "selector": "chosen by the selector",
    "round_robin": "next in turn (the selector's answer did not fit)",
    "only": "the only team allowed to speak",
}


def team_name(slug: str) -> str:
    try:
        return team(slug).name
    except Exception:  # a team renamed since: its slug is name enough
        return slug


def reason_words(session: GroupChatSession) -> str:
    """Why the discussion ended, as a sentence's end."""
    o = session.options
    return {
        "max_messages": "it reached its message limit",
        "consensus": f"a team declared {o.consensus_marker}",
        "timeout": f"it ran out of time ({o.timeout_s:.0f} s)",
        "token_budget": f"it spent its token budget ({o.token_budget or 0:,} tokens)",
        "stopped": f"{inert(session.stop_requested_by or 'an operator')} stopped it",
        None: "it has not ended",
    }[session.stop_reason]


def headline(session: GroupChatSession, *, viewer: bool = False) -> str:
    """The session's first message: who discusses, its state, and what the operator can do."""
    teams = ", ".join(f"**{inert(t)}**" for t in session.teams)
    count = f"{session.team_messages} of {session.options.max_messages} team messages"
    head = f"**Group chat** {code(session.id)} · {teams}\n\n"
    if session.status is SessionStatus.FAILED:
        return head + (
            f"**Failed** after {count}: {inert(session.error or 'a turn failed', 600)}"
            + ("" if viewer else "\n\n**Resume** continues it from its last message.")
        )
    if session.status is SessionStatus.ENDED:
        return head + f"**Ended**: {reason_words(session)} · {count}. The summary is below."
    if session.stop_reason is not None:
        return head + f"**Concluding**: {reason_words(session)}; the summary is being written."
    if session.stop_requested_by is not None:
        return head + f"**Stopping** (asked by {inert(session.stop_requested_by)}): the message being written ends it."
    doing = (
        "You are watching (a viewer cannot interject or stop)."
        if viewer
        else "**Type a message to interject**: the next team to speak hears it. **Stop** ends the discussion;"
        " a summary follows."
    )
    return head + f"**Running** · {count}\n\n{doing}"


def team_line(slug: str, text: str, *, number: int, entry: ChatEntry | None = None, cut: str | None = None) -> str:
    """A team's message: its label, what it wrote, and (once stored) how it came to speak; ``cut``: why
    a message being written was never finished."""
    label = f"**{inert(slug)}** · {inert(team_name(slug))} · message {number}"
    body = inert(text) if text.strip() else "…"
    if cut is not None:
        return f"{label} · *cut off: {inert(cut)} while it was written*\n\n{body}"
    if entry is None:  # the marker before the text: a streaming cursor after it would spoil its emphasis
        return f"{label} · *writing*\n\n{body}"
    how = HOW.get(str(entry.meta.get("selected_by", "")), "")
    figures = " · ".join(part for part in (f"{entry.tokens:,} tokens" if entry.tokens else "", how) if part)
    return f"{label}\n\n{body}" + (f"\n\n*{figures}*" if figures else "")


def other_line(entry: ChatEntry) -> str:
    """The topic or an interjection that was not typed in this thread (another operator, the CLI)."""
    if entry.kind == "topic":
        return f"**Topic** (set by {inert(entry.source)})\n\n{inert(entry.text)}"
    return f"**{inert(entry.source)}** · operator, interjecting\n\n{inert(entry.text)}"


def summary_markdown(summary: GroupChatSummary) -> str:
    def listed(label: str, items: Sequence[str]) -> str:
        return f"**{label}**\n" + (bullets(items, 600) if any(i.strip() for i in items) else "- (none)")

    positions = "\n".join(f"- **{inert(p.team)}**: {inert(p.argued, 600)}" for p in summary.positions)
    parts = [
        f"**Overview.** {inert(summary.overview, 2000)}" if summary.overview.strip() else "",
        listed("Decisions", summary.decisions),
        listed("Open questions", summary.open_questions),
        "**Who argued what**\n" + (positions or "- (nobody spoke)"),
    ]
    if summary.source == "transcript":
        parts.append("*The summary model failed: this outcome is built from each team's last message.*")
    return "\n\n".join(p for p in parts if p)


def ending(session: GroupChatSession, *, viewer: bool = False) -> str:
    """The end of a discussion: why, the summary, where it is kept, and what can follow."""
    n = session.team_messages
    head = f"**Discussion ended** after {n} team message{'s' * (n != 1)}: {reason_words(session)}."
    body = summary_markdown(session.summary) if session.summary else "*No summary was written.*"
    kept = f"Kept in the memory of {', '.join(inert(t) for t in session.teams)} and the shared world."
    if session.run_ids:
        nxt = f"\n\nStarted from this summary: {', '.join(code(r) for r in session.run_ids)}."
    elif viewer:
        nxt = ""
    else:
        nxt = (
            "\n\n**Run this as a requirement** starts a pipeline run from this summary. Type a new topic to"
            " open another discussion."
        )
    return f"{head}\n\n{body}\n\n*{kept}*{nxt}"


def seeded(run_id: str, by: str, *, here: bool) -> str:
    where = (
        "It is shown below as it goes."
        if here
        else f"Follow it in the *Pipeline* profile with {code('/watch ' + run_id)}."
    )
    return f"**Run {code(run_id)} started** from this discussion's summary (by {inert(by)}). {where}"


def listing(sessions: Sequence[GroupChatSession]) -> str:
    """``/groupchats``: the latest sessions, newest first."""
    if not sessions:
        return "No group chats yet. Pick teams in the settings panel ⚙ and type a topic."
    rows = [
        f"- {code(s.id)} · **{s.status.value}**"
        + (f" ({s.stop_reason})" if s.stop_reason else "")
        + f" · {', '.join(inert(t) for t in s.teams)} · {s.team_messages} messages · {inert(s.topic, 120)}"
        for s in sessions
    ]
    return "**Group chats** (newest first; `/watch ID` follows one here)\n" + "\n".join(rows)
