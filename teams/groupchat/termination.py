"""When a discussion ends. Pure functions of what is stored, checked by the driver between turns
(and the timeout and the operator's stop also during one), so a resumed session ends exactly where
the first process would have ended it.

The consensus marker counts only in a participant team's message: never in the topic nor in the
operator's words (AutoGen's ``TextMentionTermination`` also matches the task text, upstream #6826).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from teams.groupchat.base import GroupChatOptions, StopReason


@dataclass(frozen=True)
class Progress:
    """Where a session stands before its next turn."""

    team_messages: int
    elapsed_s: float
    tokens: int  # every model call of the session so far (the usage ledger)
    stop_requested_by: str | None = None


def stop_reason(options: GroupChatOptions, progress: Progress) -> StopReason | None:
    """Why the session must end before another turn, or None: it goes on."""
    if progress.stop_requested_by is not None:
        return "stopped"
    if options.token_budget is not None and progress.tokens >= options.token_budget:
        return "token_budget"
    if progress.elapsed_s >= options.timeout_s:
        return "timeout"
    if progress.team_messages >= options.max_messages:
        return "max_messages"
    return None


def is_consensus(text: str, source: str, teams: Sequence[str], marker: str) -> bool:
    """Whether a message declares consensus: a participant team's, holding the marker as a word."""
    return source in teams and re.search(rf"(?<![\w]){re.escape(marker)}(?![\w])", text) is not None
