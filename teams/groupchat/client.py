"""AutoGen's ``ChatCompletionClient`` on the factory's model chain (``Factory.model``).

Every message of a group chat — each team's turn, the speaker selection, the summary — is a
``ChatRequest`` to the factory's ``RoutedChatModel``: aliases, fallback, budgets, the usage ledger
(``run_id`` is the session id), tracing. Never a direct provider client. One client per speaker:
each team speaks with its own alias, as in direct team chat.

AutoGen hands a speaker its whole context: its system message, the others' messages as
``UserMessage`` (source: the agent's name) and its own as ``AssistantMessage``. The client names
each speaker in the text (``[solution-architecture]: …``, ``[operator ana]: …``) and merges
consecutive messages of one role, which every provider accepts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from memory.gateway import approx_tokens
from observability.text import storable
from routing.base import Alias, ChatRequest, ChatResponse, Message, RoutedChatModel
from routing.streaming import closing

#: What AutoGen may ask of this client: text, JSON and structured output; no tools, no images.
MODEL_INFO = ModelInfo(
    vision=False,
    function_calling=False,
    json_output=True,
    family=ModelFamily.UNKNOWN,
    structured_output=True,
    multiple_system_messages=False,
)

Role = Literal["system", "user", "assistant"]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # images or function calls: only their text form reaches the model
        return "\n".join(c if isinstance(c, str) else str(c) for c in content)
    return str(content)


def to_messages(messages: Sequence[LLMMessage], speakers: Mapping[str, str]) -> list[Message]:
    """AutoGen's messages as routing messages: each speaker named in its text (``speakers`` maps an
    agent's name to its label; any other source is an operator), one role never twice in a row."""
    converted: list[tuple[Role, str]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            role: Role = "system" if not converted or converted[-1][0] == "system" else "user"
            converted.append((role, message.content if role == "system" else f"[moderator]: {message.content}"))
        elif isinstance(message, UserMessage):
            source = message.source
            label = speakers.get(source) or ("task" if source == "user" else f"operator {source}")
            converted.append(("user", f"[{label}]: {_text(message.content)}"))
        elif isinstance(message, AssistantMessage):
            converted.append(("assistant", _text(message.content)))
        elif isinstance(message, FunctionExecutionResultMessage):
            converted.append(("user", "\n".join(r.content for r in message.content)))
    merged: list[Message] = []
    for role, text in converted:
        if merged and merged[-1].role == role:
            merged[-1] = Message(role=role, content=f"{merged[-1].content}\n\n{text}")
        else:
            merged.append(Message(role=role, content=text))
    return merged


def _schema(json_output: bool | type[BaseModel] | None) -> dict[str, Any] | None:
    if json_output is None or json_output is False:
        return None
    if json_output is True:
        return {"type": "object"}
    return json_output.model_json_schema()


def _result(response: ChatResponse) -> CreateResult:
    return CreateResult(
        finish_reason="stop",
        content=storable(response.text),  # kept in the transcript and the saved state
        usage=RequestUsage(prompt_tokens=response.tokens_in, completion_tokens=response.tokens_out),
        cached=False,
    )


class RoutedChatCompletionClient(ChatCompletionClient):
    """A ``ChatCompletionClient`` whose every call is a ``ChatRequest`` to ``model`` (the factory's
    chain), tagged with the session (``run_id``), the team and ``purpose`` for the ledger."""

    def __init__(
        self,
        model: RoutedChatModel,
        *,
        alias: Alias,
        session_id: str,
        team: str | None,
        purpose: str,
        timeout_s: float,
        max_tokens: int = 1024,
        temperature: float = 0.3,
        speakers: Mapping[str, str] | None = None,
        context_window: int = 8192,
        turn_cue: str | None = None,
    ) -> None:
        self._model = model
        self._alias = alias
        self._session_id = session_id
        self._team = team
        self._purpose = purpose
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._speakers = dict(speakers or {})
        self._window = context_window
        self._turn_cue = turn_cue  # said last when the context does not end with someone else's words
        self._last = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        #: The latest call's error (AutoGen reports a speaker's failure as text only; the driver
        #: reads the cause here, e.g. a spent budget).
        self.failure: Exception | None = None

    def request(self, messages: Sequence[LLMMessage], json_output: bool | type[BaseModel] | None = None) -> ChatRequest:
        """The ``ChatRequest`` this client sends for ``messages``."""
        converted = to_messages(messages, self._speakers)
        if self._turn_cue and (not converted or converted[-1].role != "user"):
            converted.append(Message(role="user", content=f"[moderator]: {self._turn_cue}"))
        return ChatRequest(
            alias=self._alias,
            messages=converted,
            json_schema=_schema(json_output),
            max_tokens=self._max_tokens,
            temperature=self._temperature,
            run_id=self._session_id,
            team=self._team,
            purpose=self._purpose,
        )

    @staticmethod
    def _no_tools(tools: Sequence[Tool | ToolSchema]) -> None:
        if tools:
            raise ValueError("group chat speakers have no tools; this client does not offer function calling")

    def _count(self, response: ChatResponse) -> CreateResult:
        self._last = RequestUsage(prompt_tokens=response.tokens_in, completion_tokens=response.tokens_out)
        self._total = RequestUsage(
            prompt_tokens=self._total.prompt_tokens + response.tokens_in,
            completion_tokens=self._total.completion_tokens + response.tokens_out,
        )
        return _result(response)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},  # noqa: B006  (AutoGen's signature; never mutated)
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        self._no_tools(tools)
        request = self.request(messages, json_output)
        call = asyncio.ensure_future(self._model.complete(request, timeout_s=self._timeout_s))
        if cancellation_token is not None:
            cancellation_token.link_future(call)
        try:
            return self._count(await call)
        except Exception as exc:
            self.failure = exc
            raise

    async def create_stream(  # an async generator, as AutoGen's own clients are
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},  # noqa: B006
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Text chunks as the model writes them, then the ``CreateResult``. Structured output is not
        streamed by the chain: it comes whole, as the one item."""
        self._no_tools(tools)
        request = self.request(messages, json_output)
        if request.json_schema is not None:
            yield await self.create(messages, json_output=json_output, cancellation_token=cancellation_token)
            return
        async with closing(self._model.stream(request, timeout_s=self._timeout_s)) as items:
            while True:
                step = asyncio.ensure_future(anext(items, None))
                if cancellation_token is not None:
                    cancellation_token.link_future(step)  # a stopped session abandons the call at once
                try:
                    item = await step
                except Exception as exc:
                    self.failure = exc
                    raise
                if item is None:
                    return
                yield self._count(item) if isinstance(item, ChatResponse) else storable(item)

    async def close(self) -> None:
        """Nothing to close: the factory owns the model chain."""

    def actual_usage(self) -> RequestUsage:
        return self._last

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """An estimate (about 4 characters a token): the chain's models have different tokenizers."""
        return sum(approx_tokens(m.content) + 4 for m in to_messages(messages, self._speakers))

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        return max(0, self._window - self.count_tokens(messages, tools=tools))

    @property
    def capabilities(self) -> ModelCapabilities:  # deprecated by AutoGen, still abstract
        return ModelCapabilities(vision=False, function_calling=False, json_output=True)

    @property
    def model_info(self) -> ModelInfo:
        return MODEL_INFO
