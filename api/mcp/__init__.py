"""The MCP server (the ``mcp`` package): the factory's decision queue, runs and audit as tools, resources and a
prompt for an AI assistant, over stdio (``factory mcp``) and streamable HTTP (``/mcp``).

``build_server`` makes the server on an ``Operations``; ``mount_mcp`` serves it at ``/mcp`` of a Starlette
app; ``serve_stdio`` serves it on stdio with one token's rights.
"""

from api.mcp.http import PATH, mount_mcp
from api.mcp.identity import Identity
from api.mcp.server import build_server
from api.mcp.stdio import serve_stdio, token_from_env

__all__ = ["PATH", "Identity", "build_server", "mount_mcp", "serve_stdio", "token_from_env"]
