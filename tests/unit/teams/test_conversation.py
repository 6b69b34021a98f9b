"""Direct team chat: the team's identity in the system prompt, its memory recalled, the reply
streamed in pieces, the exchange retained as a transcript of the team's bank."""

from __future__ import annotations

from typing import Any

from memory.base import MemoryKind, NewMemory
from routing.base import ChatRequest, ChatResponse, Message
from routing.scripted import ScriptedModel
from teams.conversation import TeamConversation, system_prompt
from teams.roster import team


class Gateway:
    """Just what the conversation uses of the memory gateway."""

    def __init__(self, fail: bool = False) -> None:
        self.kept: list[NewMemory] = []
        self.fail = fail

    async def recall(self, slug: str, query: str, **_: Any) -> list[Any]:
        if self.fail:
            raise OSError("memory is down")
        return []

    async def mental_model(self, slug: str) -> str | None:
        return "We test the redirect path first."

    async def retain(self, items: list[NewMemory], *, dedupe: bool = True) -> list[Any]:
        self.kept += items
        return []


class Seen(ScriptedModel):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest, *, timeout_s: float) -> Any:  # type: ignore[override]
        self.requests.append(request)
        async for item in super().stream(request, timeout_s=timeout_s):
            yield item


async def test_a_reply_streams_in_pieces_and_is_kept_in_the_teams_bank() -> None:
    model, gateway = Seen(), Gateway()
    chat = TeamConversation(model, gateway, timeout_s=10)  # type: ignore[arg-type]
    history = [Message(role="user", content="Hi"), Message(role="assistant", content="Hello.")]
    items = [i async for i in chat.reply("qa-engineering", history, "What first?", by="ana")]
    chunks, final = [i for i in items if isinstance(i, str)], items[-1]
    assert isinstance(final, ChatResponse) and len(chunks) > 1 and "".join(chunks) == final.text
    request = model.requests[0]
    assert request.alias == team("qa-engineering").alias and request.team == "qa-engineering"
    assert request.purpose == "team_chat" and request.json_schema is None
    assert request.messages[0].role == "system" and team("qa-engineering").name in request.messages[0].content
    assert "We test the redirect path first." in request.messages[0].content  # its mental model
    assert [m.content for m in request.messages[1:]] == ["Hi", "Hello.", "What first?"]
    (kept,) = gateway.kept
    assert kept.bank == "qa-engineering" and kept.kind is MemoryKind.TRANSCRIPT
    assert "ana asked qa-engineering: What first?" in kept.text and final.text in kept.text


async def test_the_team_answers_without_its_memory_when_memory_fails() -> None:
    chat = TeamConversation(ScriptedModel(), Gateway(fail=True), timeout_s=10)  # type: ignore[arg-type]
    items = [i async for i in chat.reply("documentation", [], "Hello", by="ana")]
    assert isinstance(items[-1], ChatResponse) and items[-1].text


def test_the_system_prompt_is_the_teams_identity() -> None:
    prompt = system_prompt("security-engineering", ["threat model v1"], None)
    member = team("security-engineering")
    assert member.soul.strip()[:80] in prompt and "- threat model v1" in prompt and member.goal in prompt
