"""The factory's MCP server: FastMCP with the tools, resources and prompt, on one ``Operations``.

``build_server`` is what both transports serve (``api.mcp.stdio`` for ``factory mcp``, ``api.mcp.http``
for ``/mcp``); they differ only in the ``Identity`` that tells whose token a call carries.

``FactoryMCP`` changes one thing of FastMCP: what a refusal reads like. A tool's error comes back as an
``isError`` result (never a crash of the session) carrying the CLI's sentence, not FastMCP's
``Error executing tool ...`` around a traceback's last line; a resource's or the prompt's error is a
protocol error with the same sentence (``api.mcp.errors``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pydantic_core
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ResourceError, ToolError
from mcp.server.fastmcp.prompts import Prompt
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ContentBlock, GetPromptResult
from pydantic import AnyUrl

from api.mcp.errors import plain
from api.mcp.identity import Identity
from api.mcp.resources import register_resources
from api.mcp.tools import register_tools
from factory.operations import Operations

NAME = "ai-software-factory"
INSTRUCTIONS = """\
The AI Software Factory turns requirements into delivery artifacts through a pipeline of teams; what
the teams cannot settle waits on a human as an escalation. Start with factory_what_needs_me when the
operator asks what needs them; factory_show_escalation before deciding; factory_approve,
factory_answer, factory_reject or factory_defer to decide (only what the operator said). Submit work
with factory_submit and follow it with factory_run_status. Deciding and submitting need an operator
token; a viewer token reads only."""


class FactoryMCP(FastMCP[Any]):
    """FastMCP whose refusals say what the CLI says (see the module docstring)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._prompts: dict[str, Prompt] = {}

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Sequence[ContentBlock] | dict[str, Any]:
        try:
            return await super().call_tool(name, arguments)
        except ToolError as exc:  # the lowlevel server makes it an isError result with this text
            raise ToolError(plain(exc, name) if exc.__cause__ is not None else str(exc)) from None

    async def read_resource(self, uri: AnyUrl | str) -> Iterable[ReadResourceContents]:
        try:
            return await super().read_resource(uri)
        except Exception as exc:
            if str(exc).startswith("Unknown resource"):
                raise ResourceError(f"no resource {str(uri)!r}; list them with resources/list") from None
            raise ResourceError(plain(exc, str(uri))) from None

    def add_prompt(self, prompt: Prompt) -> None:
        super().add_prompt(prompt)
        self._prompts[prompt.name] = prompt

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None) -> GetPromptResult:
        prompt = self._prompts.get(name)
        if prompt is None:
            raise ValueError(f"no prompt {name!r}; the prompts are {', '.join(sorted(self._prompts))}")
        try:
            messages = await prompt.render(arguments, context=self.get_context())
        except Exception as exc:  # without a cause: FastMCP's own check of the arguments, already plain
            own = exc.__cause__ is None and exc.__context__ is None
            raise ValueError(str(exc) if own else plain(exc, f"prompt {name}")) from None
        return GetPromptResult(description=prompt.description, messages=pydantic_core.to_jsonable_python(messages))


def build_server(
    ops: Operations,
    identity: Identity,
    *,
    max_body_bytes: int = 256 * 1024,
    transport_security: TransportSecuritySettings | None = None,
) -> FactoryMCP:
    """The MCP server on ``ops``; over HTTP it is stateless (every request stands alone, any process
    can answer it) and answers JSON, bodies over ``max_body_bytes`` refused."""
    server = FactoryMCP(
        name=NAME,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        stateless_http=True,
        json_response=True,
        max_request_body_size=max_body_bytes,
        transport_security=transport_security or TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    register_tools(server, ops, identity)
    register_resources(server, ops, identity)
    return server
