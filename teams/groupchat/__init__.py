"""Group chat (DESIGN §2 E): chosen teams discuss a topic, the operator in the room.

AutoGen (``autogen_agentchat``, ``autogen_core``) is imported here and nowhere else, and only by the
modules that run a discussion (``client``, ``selection``, ``session``, ``driver``): importing this
package, its models or its store costs no AutoGen import (``GroupChats`` loads it on first use).

The service for front doors
---------------------------

Get it from a factory: ``chats = factory.wiring.group_chats(factory)``. Sessions never live in a
request or a socket: a driver (the CLI's own process, a task the chat app owns) calls ``drive``;
every other call works from any process, through PostgreSQL.

``await chats.open(topic, teams, *, by, options=None) -> GroupChatSession``
    Validate (2..8 distinct known teams as ``"a,b"`` or a list; a topic of 1..8000 characters;
    ``InputError``/``UnknownTeam`` otherwise) and store a new ``running`` session. Nothing is said yet.
``await chats.drive(session_id) -> GroupChatSession``
    Run the discussion to its end in this process — turns, then summary, memory, audit — and return
    the ended session. ``RunBusy`` if another process drives it; ``TurnFailed`` (a ``PipelineError``)
    if a turn failed (the session is ``failed``; ``drive`` again continues it).
``await chats.start(topic, teams, *, by, options=None)``: ``open`` then ``drive`` (the CLI).
``await chats.resume(session_id)``: ``drive`` a session whose process died, from its saved state.
``await chats.orphaned() -> list[str]``: running sessions nobody drives (to ``resume`` at start-up).
``await chats.interject(session_id, text, *, by) -> Interjection``
    Queue the operator's message; the driver hands it to the next speaker (``InputError`` if the
    session is not running). It becomes a transcript line of kind ``operator``, source ``by``.
``await chats.stop(session_id, *, by) -> bool``: end the session (summary and memory follow).
``await chats.get(session_id)`` (``RunNotFound``), ``await chats.recent(limit=20, status=None)``,
``await chats.transcript(session_id, after_seq=-1)`` -> ``list[ChatEntry]``,
``await chats.interjections(session_id)``.
``await chats.to_requirement(session_id, *, by, pipeline="phase1") -> Run``
    "Run this as a requirement": a pipeline run from the summary through ``PipelineEngine.submit``
    (then wake the workers or nudge, as after any submission).

Watching: every step is a live event keyed by the session id (``Event.run_id``) on the Redis stream
``{prefix}events:{session_id}`` (``observability.redis_stream.tail_events``) and on the process's
``Factory.bus``: ``groupchat.opened`` {topic, teams, by}; ``groupchat.chunk`` {team, seq, text} as a
team writes; ``groupchat.message`` {seq, kind, source, text, tokens, meta} for each transcript line
(topic, operator, team) once stored; ``groupchat.interjection`` {id, by, text} when queued;
``groupchat.stop_requested`` {by}; ``groupchat.ended`` {reason, entries, summary};
``groupchat.failed`` {error}; ``groupchat.requirement`` {run_id, by}. A viewer reads
``transcript(after_seq=…)`` first, then follows the events: nothing is lost to a closed tab.

``GroupChatOptions``: ``max_messages`` (team messages, 12), ``max_consecutive`` (1),
``timeout_s`` (900, time spent driving), ``token_budget`` (60,000, every call of the session),
``consensus_marker`` ("CONSENSUS": a team message holding it ends the session), ``selector_alias``,
``summary_alias``, ``max_tokens_per_message``. Stop reasons: ``max_messages``, ``consensus``,
``timeout``, ``token_budget``, ``stopped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teams.groupchat.base import (
    ChatEntry,
    GroupChatOptions,
    GroupChatSession,
    GroupChatSummary,
    Interjection,
    Position,
    SessionStatus,
    StopReason,
)
from teams.groupchat.store_pg import MIGRATIONS, GroupChatStore

if TYPE_CHECKING:
    from teams.groupchat.deps import GroupChatDeps
    from teams.groupchat.service import GroupChats, parse_teams

__all__ = [
    "MIGRATIONS",
    "ChatEntry",
    "GroupChatDeps",
    "GroupChatOptions",
    "GroupChatSession",
    "GroupChatStore",
    "GroupChatSummary",
    "GroupChats",
    "Interjection",
    "Position",
    "SessionStatus",
    "StopReason",
    "parse_teams",
]

_LAZY = {"GroupChats": "service", "parse_teams": "service", "GroupChatDeps": "deps"}


def __getattr__(name: str) -> Any:
    """The service and its deps, imported on first use (they bring AutoGen and the pipeline)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"teams.groupchat.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'teams.groupchat' has no attribute {name!r}")
