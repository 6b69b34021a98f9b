"""Group chat (DESIGN §2 E): chosen teams discuss a topic; the operator is in the room."""

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
from teams.groupchat.deps import GroupChatDeps
from teams.groupchat.service import GroupChats, parse_teams
from teams.groupchat.store_pg import MIGRATIONS, GroupChatStore

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
