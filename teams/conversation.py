"""Direct team chat (DESIGN §2 D): talk to one team as itself — its identity docs as the system
prompt, recall from its memory bank, its model alias — with the reply streamed as it is written,
and the exchange retained to the team's bank as a transcript. Front doors (the chat, later the
API) only render what ``reply`` yields."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from memory.base import MemoryKind, NewMemory
from memory.gateway import MemoryGateway
from routing.base import ChatRequest, ChatResponse, Message
from teams.roster import team

log = logging.getLogger(__name__)

MAX_TURNS = 12  # earlier turns of the conversation kept in the prompt (each a question and a reply)
MAX_TEXT = 8000  # characters of one operator message
RECALL_TOKENS = 600


DIRECT = "talking directly with the operator"


def system_prompt(slug: str, remembered: Sequence[str], mental_model: str | None, *, setting: str = DIRECT) -> str:
    """The team as itself: identity docs, goal, mental model and what it recalls; ``setting`` says
    where it speaks (group chat: in a discussion with other teams)."""
    member = team(slug)
    parts = [
        f"You are the {member.name} team of an AI software factory, {setting}."
        " Answer as this team: from its responsibilities and what it remembers; say so when you do not know.",
        member.soul.strip(),
        member.agents.strip(),
        f"Your goal in a pipeline run: {member.goal}",
    ]
    if mental_model:
        parts.append(f"Your current understanding of the project:\n{mental_model.strip()}")
    if remembered:
        parts.append("What you remember that may be relevant:\n" + "\n".join(f"- {r}" for r in remembered))
    return "\n\n".join(p for p in parts if p)


async def recollect(gateway: MemoryGateway | None, slug: str, query: str) -> tuple[list[str], str | None]:
    """What a team recalls for ``query`` from its bank (and the shared world), and its mental model;
    nothing when memory fails (the team answers without its memory rather than not at all)."""
    if gateway is None:
        return [], None
    try:
        found = await gateway.recall(slug, query, budget_tokens=RECALL_TOKENS, limit=6)
        return [r.item.text[:600] for r in found], await gateway.mental_model(slug)
    except Exception as exc:
        log.warning("recall for %s failed: %s", slug, exc)
        return [], None


class TeamConversation:
    """One process's way to talk to teams; the conversation's history is the caller's."""

    def __init__(self, model: Any, gateway: MemoryGateway | None, *, timeout_s: float) -> None:
        self._model = model  # a StreamingChatModel: the factory's recorded, budgeted router
        self._gateway = gateway
        self._timeout_s = timeout_s

    async def reply(
        self, slug: str, history: Sequence[Message], text: str, *, by: str
    ) -> AsyncIterator[str | ChatResponse]:
        """Text chunks of the team's answer as they come, then the whole answer (a ChatResponse);
        the exchange is retained to the team's bank afterwards (a memory failure loses the
        transcript, never the answer)."""
        member = team(slug)
        text = text.strip()[:MAX_TEXT]
        remembered, mental = await recollect(self._gateway, slug, text)
        messages = [
            Message(role="system", content=system_prompt(slug, remembered, mental)),
            *list(history)[-2 * MAX_TURNS :],
            Message(role="user", content=text),
        ]
        request = ChatRequest(alias=member.alias, messages=messages, team=slug, purpose="team_chat", temperature=0.3)  # type: ignore[arg-type]
        final: ChatResponse | None = None
        async for item in self._model.stream(request, timeout_s=self._timeout_s):
            if isinstance(item, ChatResponse):
                final = item
            yield item
        if final is not None and self._gateway is not None:
            transcript = f"{by} asked {slug}: {text}\n{slug} answered: {final.text}"[:20_000]
            try:
                await self._gateway.retain(
                    [
                        NewMemory(
                            bank=slug,
                            kind=MemoryKind.TRANSCRIPT,
                            text=transcript,
                            metadata={"source": "team chat", "by": by},
                        )
                    ],
                    dedupe=False,
                )
            except Exception as exc:
                log.warning("team chat: the transcript with %s was not retained: %s", slug, exc)
