"""Who speaks next: a selection that cannot loop.

AutoGen's own model-based selection retries an invalid answer and then falls back to the previous
speaker, which — when that speaker is excluded — repeats it forever (upstream #7471). Here the
selector is our ``selector_func``, so AutoGen's fallback never runs:

* a team that has spoken ``max_consecutive`` times in a row is excluded (an operator's message
  breaks a row, so the operator can ask the last speaker a question);
* with one candidate left, it speaks and no model is asked;
* else one model call (alias ``selector_alias``) names the next speaker; an answer naming exactly
  one candidate is taken, anything else — no team, several, a team not in the session, an
  excluded one, a failed call — falls back to the next candidate in round-robin order after the
  last team that spoke.

Everything is derived from the message thread AutoGen passes in (which ``save_state`` keeps), so
a resumed session selects exactly as the first process would have.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage

from factory.errors import FactoryError
from routing.base import Alias, ChatRequest, ChatResponse, Message, RoutedChatModel
from teams.roster import team

log = logging.getLogger(__name__)

HISTORY_MESSAGES = 12  # the latest messages the selector reads
HISTORY_CHARS = 400  # of each


def agent_name(slug: str) -> str:
    """AutoGen's name for a team (a Python identifier)."""
    return slug.replace("-", "_")


@dataclass(frozen=True)
class Selection:
    """The next speaker and how it was chosen."""

    speaker: str  # a team slug
    how: Literal["selector", "round_robin", "only"]
    answer: str | None = None  # the selector model's answer, if one was asked


def streak(sources: Sequence[str], teams: Sequence[str]) -> tuple[str | None, int]:
    """The last team that spoke and how many times in a row it has spoken since anyone else (a team
    or the operator) spoke; 0 when the last message is not a team's."""
    last = next((s for s in reversed(sources) if s in teams), None)
    count = 0
    for source in reversed(sources):
        if source != last:
            break
        count += 1
    return last, count


def candidates(sources: Sequence[str], teams: Sequence[str], max_consecutive: int) -> list[str]:
    """The teams that may speak next, in session order."""
    last, count = streak(sources, teams)
    return [t for t in teams if not (t == last and count >= max_consecutive)]


def round_robin(teams: Sequence[str], last: str | None, allowed: Sequence[str]) -> str:
    """The first allowed team after ``last`` in session order (from the first when none spoke)."""
    start = teams.index(last) + 1 if last in teams else 0
    for offset in range(len(teams)):
        slug = teams[(start + offset) % len(teams)]
        if slug in allowed:
            return slug
    raise ValueError("no team may speak")  # candidates() always leaves one: max_consecutive >= 1, two teams


def mentioned(answer: str, teams: Sequence[str]) -> list[str]:
    """The teams an answer names: by slug, with ``_`` or spaces for ``-``, or by display name (any case)."""
    found = []
    for slug in teams:
        names = {slug, agent_name(slug), slug.replace("-", " "), team(slug).name}
        pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        if re.search(rf"(?<![\w-])(?:{pattern})(?![\w-])", answer, re.IGNORECASE):
            found.append(slug)
    return found


def choose(answer: str | None, sources: Sequence[str], teams: Sequence[str], max_consecutive: int) -> Selection:
    """The selector's answer if it names exactly one allowed team, else round-robin."""
    allowed = candidates(sources, teams, max_consecutive)
    named = mentioned(answer, teams) if answer else []
    if len(named) == 1 and named[0] in allowed:
        return Selection(named[0], "selector", answer)
    last, _ = streak(sources, teams)
    return Selection(round_robin(teams, last, allowed), "round_robin", answer)


def selector_prompt(
    topic: str, teams: Sequence[str], history: Sequence[tuple[str, str]], allowed: Sequence[str]
) -> str:
    roles = "\n".join(f"- {slug}: {team(slug).name}. {team(slug).goal[:200]}" for slug in teams)
    lines = "\n".join(f"[{source}]: {text[:HISTORY_CHARS]}" for source, text in history[-HISTORY_MESSAGES:])
    return (
        "You choose who speaks next in a discussion between teams of an AI software factory.\n"
        f"Topic: {topic[:1000]}\n\nTeams:\n{roles}\n\nThe discussion so far (latest last):\n{lines}\n\n"
        f"Who should speak next? Choose one of: {', '.join(allowed)}. Reply with that team's name only."
    )


class Selector:
    """The session's ``selector_func``: one bounded model call at most per turn."""

    def __init__(
        self,
        model: RoutedChatModel,
        *,
        session_id: str,
        topic: str,
        teams: Sequence[str],
        max_consecutive: int,
        alias: Alias,
        timeout_s: float,
    ) -> None:
        self._model = model
        self._session_id = session_id
        self._topic = topic
        self._teams = list(teams)
        self._by_agent = {agent_name(t): t for t in teams}
        self._max_consecutive = max_consecutive
        self._alias = alias
        self._timeout_s = timeout_s
        self.last: Selection | None = None  # the latest choice, for the transcript line it leads to

    def history(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> list[tuple[str, str]]:
        """(source, text) of each chat message: a team by its slug, anyone else as an operator."""
        return [
            (self._by_agent.get(m.source) or f"operator {m.source}", m.to_text())
            for m in thread
            if isinstance(m, BaseChatMessage)
        ]

    async def select(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str:
        """The next speaker's agent name (AutoGen's ``selector_func``: a coroutine function)."""
        history = self.history(thread)
        sources = [source for source, _ in history]
        allowed = candidates(sources, self._teams, self._max_consecutive)
        if len(allowed) == 1:
            self.last = Selection(allowed[0], "only")
        else:
            self.last = choose(await self._ask(history, allowed), sources, self._teams, self._max_consecutive)
        if self.last.how == "round_robin":
            log.info("group chat %s: selector answered %r; %s speaks in round-robin order",
                     self._session_id, self.last.answer, self.last.speaker)  # fmt: skip
        return agent_name(self.last.speaker)

    async def _ask(self, history: Sequence[tuple[str, str]], allowed: Sequence[str]) -> str | None:
        prompt = selector_prompt(self._topic, self._teams, history, allowed)
        request = ChatRequest(
            alias=self._alias,
            messages=[Message(role="user", content=prompt)],
            max_tokens=24,
            temperature=0.0,
            run_id=self._session_id,
            purpose="groupchat_select",
        )
        try:
            answer = None
            async for item in self._model.stream(request, timeout_s=self._timeout_s):
                if isinstance(item, ChatResponse):
                    answer = item.text
            return answer
        except (FactoryError, TimeoutError, OSError, ValueError) as exc:  # a failed selector never stops the discussion
            log.warning("group chat %s: the selector failed (%s); round-robin decides", self._session_id, exc)
            return None
