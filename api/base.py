"""Contracts of the ``api`` package: what the front doors need from the factory below them."""

from __future__ import annotations

from typing import Protocol

from factory.tokens import ApiToken


class TokenVerifier(Protocol):
    """Who a raw bearer token belongs to (``factory.tokens.TokenStore`` fits); None: nobody."""

    async def verify(self, raw: str) -> ApiToken | None: ...
