"""The scripted model's answers by purpose: taken before the team's, for calls made for no team
(a group chat's speaker selection and summary)."""

from __future__ import annotations

from routing.base import ChatRequest, ChatResponse, Message
from routing.scripted import ScriptedModel


def ask(purpose: str, team: str | None = None) -> ChatRequest:
    return ChatRequest(alias="factory/fast", messages=[Message(role="user", content="?")], team=team, purpose=purpose)


async def text(model: ScriptedModel, request: ChatRequest) -> str:
    items = [i async for i in model.stream(request, timeout_s=5)]
    assert isinstance(items[-1], ChatResponse)
    return items[-1].text


async def test_a_purposes_answers_come_first_then_the_teams_then_the_default() -> None:
    model = ScriptedModel({"purposes": {"groupchat_select": ["qa-engineering"]}, "teams": {"": ["for no team"]}})
    assert await text(model, ask("groupchat_select")) == "qa-engineering"
    assert await text(model, ask("groupchat_select")) == "for no team"  # the purpose's queue is empty
    assert "Scripted reply from the factory to groupchat_select" in await text(model, ask("groupchat_select"))


async def test_whole_answers_by_purpose_and_other_purposes_untouched() -> None:
    model = ScriptedModel({"purposes": {"groupchat_summary": [{"overview": "o"}]}, "teams": {"qa-engineering": ["x"]}})
    assert (await model.complete(ask("groupchat_summary"), timeout_s=5)).text == '{"overview": "o"}'
    assert await text(model, ask("groupchat", team="qa-engineering")) == "x"
