"""The AutoGen side of group chat without services: the ``ChatCompletionClient`` on a model chain,
and a ``SelectorGroupChat`` of teams driven turn by turn with our selector (a fake chain: the same
team, run on the real services, is in tests/integration/test_groupchat.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from autogen_agentchat.messages import ModelClientStreamingChunkEvent, TextMessage
from autogen_core import CancellationToken
from autogen_core.models import AssistantMessage, CreateResult, SystemMessage, UserMessage
from pydantic import BaseModel

from routing.base import ChatRequest, ChatResponse
from routing.scripted import ScriptedModel
from teams.groupchat.base import GroupChatOptions, GroupChatSession, SessionStatus
from teams.groupchat.client import RoutedChatCompletionClient, to_messages
from teams.groupchat.selection import Selector, agent_name
from teams.groupchat.session import build_team, group_setting

A, B, C = "solution-architecture", "security-engineering", "qa-engineering"


class Chain:
    """A fake model chain: selector requests answered from ``picks`` in order, a team's with its name."""

    def __init__(self, picks: list[str] | None = None, *, pause_s: float = 0.0) -> None:
        self.picks = list(picks or [])
        self.pause_s = pause_s
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(text='{"answer": 42}', alias=request.alias, model="fake", tokens_in=7, tokens_out=3)

    async def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        self.requests.append(request)
        if request.purpose == "groupchat_select":
            text = self.picks.pop(0) if self.picks else "no idea"
        else:
            text = f"{request.team} speaks. "
        for word in text.split(" "):
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            yield word + " "
        yield ChatResponse(text=text, alias=request.alias, model="fake", tokens_in=10, tokens_out=len(text) // 4)


def client(model: object, **kw: object) -> RoutedChatCompletionClient:
    return RoutedChatCompletionClient(
        model,  # type: ignore[arg-type]
        alias="factory/architect", session_id="gc-1", team=A, purpose="groupchat", timeout_s=5,
        speakers={agent_name(A): A, agent_name(B): B}, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_speakers_are_named_and_one_role_never_follows_itself() -> None:
    speakers = {agent_name(A): A, agent_name(B): B}
    messages = to_messages(
        [
            SystemMessage(content="You are A."),
            UserMessage(content="The topic", source="ana"),
            UserMessage(content="B's view", source=agent_name(B)),
            AssistantMessage(content="A's view", source=agent_name(A)),
            UserMessage(content="Why?", source="ana"),
        ],
        speakers,
    )
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1].content == f"[operator ana]: The topic\n\n[{B}]: B's view"
    assert messages[3].content == "[operator ana]: Why?"


async def test_the_client_streams_through_the_chain_and_counts_usage() -> None:
    chain = Chain()
    routed = client(chain, max_tokens=321, turn_cue="Your turn, A.")
    items = [i async for i in routed.create_stream([SystemMessage(content="You are A."), AssistantMessage(
        content="Earlier", source=agent_name(A))])]  # fmt: skip
    *chunks, result = items
    assert all(isinstance(c, str) for c in chunks) and len(chunks) >= 2 and isinstance(result, CreateResult)
    assert result.content == f"{A} speaks. " and "".join(map(str, chunks)).split() == result.content.split()
    request = chain.requests[0]
    assert (request.alias, request.team, request.run_id, request.purpose) == (
        "factory/architect",
        A,
        "gc-1",
        "groupchat",
    )
    assert request.max_tokens == 321 and request.json_schema is None
    assert request.messages[-1].content == "[moderator]: Your turn, A."  # it does not end on its own words
    assert routed.actual_usage().prompt_tokens == 10 and routed.total_usage().prompt_tokens == 10
    assert routed.count_tokens([UserMessage(content="x" * 400, source="ana")]) > 100
    assert routed.model_info["function_calling"] is False


async def test_structured_output_is_asked_with_a_schema_and_tools_are_refused() -> None:
    class Answer(BaseModel):
        answer: int

    chain = Chain()
    routed = client(chain)
    result = await routed.create([UserMessage(content="?", source="ana")], json_output=Answer)
    assert result.content == '{"answer": 42}' and chain.requests[0].json_schema == Answer.model_json_schema()
    [only] = [i async for i in routed.create_stream([UserMessage(content="?", source="ana")], json_output=True)]
    assert isinstance(only, CreateResult) and chain.requests[1].json_schema == {"type": "object"}
    with pytest.raises(ValueError, match="no tools"):
        await routed.create([UserMessage(content="?", source="ana")], tools=[{"name": "t"}])


async def test_a_cancelled_token_abandons_the_call_at_once() -> None:
    routed = client(Chain(pause_s=5))
    token = CancellationToken()
    asyncio.get_running_loop().call_later(0.05, token.cancel)
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.CancelledError):
        async for _ in routed.create_stream([UserMessage(content="?", source="ana")], cancellation_token=token):
            pass
    assert asyncio.get_running_loop().time() - started < 1


async def test_the_scripted_model_answers_through_the_client() -> None:
    routed = client(ScriptedModel({"teams": {A: ["We keep one service."]}}))
    items = [i async for i in routed.create_stream([UserMessage(content="Monolith?", source="ana")])]
    assert isinstance(items[-1], CreateResult) and items[-1].content == "We keep one service."


def session(**options: object) -> GroupChatSession:
    now = datetime.now(UTC)
    return GroupChatSession(
        id="gc-20260101-000000-00000000", topic="Monolith or services? Reach CONSENSUS.", teams=[A, B, C],
        options=GroupChatOptions(**options), status=SessionStatus.RUNNING, created_by="ana", created_at=now,  # type: ignore[arg-type]
        updated_at=now,
    )  # fmt: skip


async def turns(picks: list[str], count: int, **options: object) -> tuple[list[str], list[str], Chain]:
    """``count`` turns of the AutoGen team, one ``run_stream`` each as the driver runs them:
    (speakers, how each was chosen, the chain)."""
    s = session(**options)
    chain = Chain(picks)
    selector = Selector(chain, session_id=s.id, topic=s.topic, teams=s.teams,
                        max_consecutive=s.options.max_consecutive, alias="factory/fast", timeout_s=5)  # fmt: skip
    prompts = {t: f"You are {t}.\n\n{group_setting(s, t)}" for t in s.teams}
    chat, _ = build_team(s, prompts, chain, selector, timeout_s=5, window_tokens=4096)
    speakers: list[str] = []
    how: list[str] = []
    for number in range(count):
        task = TextMessage(content=s.topic, source="ana") if number == 0 else None
        chunks = 0
        async with asyncio.timeout(10):  # a livelock fails here rather than hanging
            async for item in chat.run_stream(task=task, output_task_messages=False):
                if isinstance(item, ModelClientStreamingChunkEvent):
                    chunks += 1
                elif isinstance(item, TextMessage):
                    speakers.append(item.source.replace("_", "-"))
        assert chunks >= 2  # streamed
        assert selector.last is not None
        how.append(selector.last.how)
    return speakers, how, chain


async def test_the_selectors_valid_choices_set_the_order() -> None:
    speakers, how, _ = await turns([C, "I pick solution_architecture", "security engineering"], 3)
    assert speakers == [C, A, B] and how == ["selector"] * 3


async def test_an_unknown_then_an_excluded_speaker_falls_back_to_round_robin_without_livelock() -> None:
    # #7471: AutoGen retries, then reuses the previous (excluded) speaker, forever. Here: round-robin.
    speakers, how, chain = await turns(["marketing", A, B, B, B, B], 6)
    assert speakers == [A, B, C, B, C, B]  # B is named each time from the third: excluded after it spoke
    assert how == ["round_robin", "round_robin", "round_robin", "selector", "round_robin", "selector"]
    assert sum(r.purpose == "groupchat_select" for r in chain.requests) == 6  # one selector call per turn, no retries


async def test_no_team_speaks_more_than_max_consecutive_times_in_a_row() -> None:
    speakers, how, _ = await turns([A] * 9, 9, max_consecutive=2)
    assert speakers == [A, A, B, A, A, B, A, A, B]
    assert how == ["selector", "selector", "round_robin"] * 3


async def test_with_one_candidate_left_no_model_is_asked() -> None:
    s = session()
    s.teams = [A, B]
    chain = Chain()
    selector = Selector(chain, session_id=s.id, topic=s.topic, teams=s.teams, max_consecutive=1,
                        alias="factory/fast", timeout_s=5)  # fmt: skip
    name = await selector.select([TextMessage(content="x", source=agent_name(A))])
    assert name == agent_name(B) and selector.last is not None and selector.last.how == "only" and not chain.requests
