"""Bodies over the size limit are refused before they are read, let alone parsed; a NUL in a path or a
query (which no id or query holds, and PostgreSQL cannot take) is refused before any route sees it; a
request that could carry a body but names no bearer token is refused (401) before its body is read.

A pure ASGI middleware: a declared ``Content-Length`` over the limit is answered with 413 at once
(nothing of the body is read); a body without one (chunked) is read as it arrives and cut off with
413 as soon as it passes the limit. Either way the app behind never sees the oversized body.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import MEDIA_TYPE, TYPE_BASE


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a 413 problem."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"").lower():
            await self._refuse(send, 422, "invalid-request", "the request's path or query holds a NUL character;"
                               " ids and queries are plain text")  # fmt: skip
            return
        if scope.get("method") in _WITH_BODY and not _bearer(scope):  # nothing is read for nobody
            await self._refuse(send, 401, "not-authenticated", "no token: send `Authorization: Bearer <token>`"
                               " (create one with `factory tokens create`)", www=True)  # fmt: skip
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._too_large(send)
            return
        # Read the body here, up to the limit: an app that reads it itself turns any error while
        # reading into its own 400, so the count cannot be left to it.
        chunks: list[bytes] = []
        seen = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        detail = f"the request body is over {self.limit} bytes; send less (FACTORY_API_MAX_BODY_BYTES)"
        await self._refuse(send, 413, "body-too-large", detail)

    async def _refuse(self, send: Send, status: int, kind: str, detail: str, *, www: bool = False) -> None:
        title = {413: "Request body too large", 401: "Not authenticated"}.get(status, "Invalid request")
        body = json.dumps({"type": TYPE_BASE + kind, "title": title, "status": status, "detail": detail}).encode()
        headers: list[Any] = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *([(b"www-authenticate", b'Bearer realm="factory"')] if www else []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _bearer(scope: Scope) -> bool:
    """Whether the request names a bearer token at all (``api.auth`` verifies it)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return bool(value[:7].lower() == b"bearer " and value[7:].strip())
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
