"""Who is asking, and may they: bearer tokens, scopes, and a rate limit per token.

Every request of the API carries ``Authorization: Bearer <token>`` (``factory tokens create``).
A token's scope says what it may do: ``viewer`` reads everything and decides nothing,
``operator`` also submits, decides, cancels and revises, ``admin`` also changes routing and
webhooks. A verified token is remembered for ``cache_s`` (a revoked one stops working within that
time) so a busy client costs no database round trip per request. Each token has a token bucket
(``rate_per_s`` on average, ``burst`` at once); past it, 429 with ``Retry-After``. The buckets live
in this process: with several API processes behind a balancer each allows the rate.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from api.base import TokenVerifier
from api.problems import Problem
from factory.tokens import ApiToken, Scope

BEARER = "bearer"
_MAX_TRACKED = 10_000  # tokens with a bucket or a cached verification, least recently used dropped


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class Guard:
    """Authentication, scope checks and rate limiting for one API process."""

    verifier: TokenVerifier
    rate_per_s: float = 20.0
    burst: int = 40
    cache_s: float = 2.0
    #: Refused tokens one client address may send per second (and at once) before it is told to wait:
    #: guessing costs a database lookup each, and the guesser gains nothing by going faster.
    failures_per_s: float = 2.0
    failures_burst: int = 20
    _verified: OrderedDict[str, tuple[ApiToken, float]] = field(default_factory=OrderedDict)
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _failures: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    async def authenticate(self, authorization: str | None, *, client: str | None = None) -> ApiToken:
        """The token of an ``Authorization`` header; 401 if missing, malformed, unknown or revoked; 429
        when ``client`` (its address) sent too many refused tokens lately."""
        if client is not None:
            self._still_trusted(client)
        try:
            return await self._authenticate(authorization)
        except Problem:
            if client is not None:
                _take(self._failures, client, self.failures_per_s, self.failures_burst)
            raise

    def _still_trusted(self, client: str) -> None:
        bucket = _refill(self._failures, client, self.failures_per_s, self.failures_burst)
        if bucket is not None and bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self.failures_per_s)
            raise Problem(429, f"too many refused tokens from {client}; retry in {wait}s with a valid one",
                          kind="rate-limited", headers={"Retry-After": str(wait)})  # fmt: skip

    async def _authenticate(self, authorization: str | None) -> ApiToken:
        if not authorization:
            raise _unauthenticated(
                "no token: send `Authorization: Bearer <token>` (create one with `factory tokens create`)"
            )
        scheme, _, raw = authorization.strip().partition(" ")
        raw = raw.strip()
        if scheme.lower() != BEARER or not raw:
            raise _unauthenticated("the Authorization header must be `Bearer <token>`")
        key = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
        now = time.monotonic()
        cached = self._verified.get(key)
        if cached is not None and now - cached[1] < self.cache_s:
            self._verified.move_to_end(key)
            return cached[0]
        token = await self.verifier.verify(raw)
        if token is None:
            self._verified.pop(key, None)
            raise _unauthenticated("the token is unknown or revoked; see `factory tokens list`")
        self._verified[key] = (token, now)
        _bounded(self._verified)
        return token

    def require(self, token: ApiToken, needed: Scope) -> None:
        """403 unless ``token``'s scope allows ``needed``."""
        if not token.scope.allows(needed):
            raise Problem(
                403,
                f"token {token.name!r} has the {token.scope.value} scope; this needs {needed.value}"
                f" (create one with `factory tokens create NAME --scope {needed.value}`)",
                kind="scope-too-narrow",
            )

    def admit(self, token: ApiToken) -> None:
        """Take one request from ``token``'s bucket; 429 with ``Retry-After`` when it is empty."""
        bucket = _refill(self._buckets, token.id, self.rate_per_s, self.burst) or _new(
            self._buckets, token.id, self.burst
        )
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self.rate_per_s)
            raise Problem(
                429,
                f"token {token.name!r} is over its rate limit ({self.rate_per_s:g} requests/s, bursts of"
                f" {self.burst}); retry in {wait}s",
                kind="rate-limited",
                headers={"Retry-After": str(wait)},
            )
        bucket.tokens -= 1.0


def _unauthenticated(detail: str) -> Problem:
    return Problem(401, detail, kind="not-authenticated", headers={"WWW-Authenticate": 'Bearer realm="factory"'})


def _refill(table: OrderedDict[str, _Bucket], key: str, rate: float, burst: int) -> _Bucket | None:
    """``key``'s bucket, refilled for the time since it was last used; None if it has none."""
    bucket = table.get(key)
    if bucket is None:
        return None
    now = time.monotonic()
    table.move_to_end(key)
    bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
    bucket.at = now
    return bucket


def _new(table: OrderedDict[str, _Bucket], key: str, burst: int) -> _Bucket:
    bucket = table[key] = _Bucket(float(burst), time.monotonic())
    _bounded(table)
    return bucket


def _take(table: OrderedDict[str, _Bucket], key: str, rate: float, burst: int) -> None:
    bucket = _refill(table, key, rate, burst) or _new(table, key, burst)
    bucket.tokens = max(0.0, bucket.tokens - 1.0)


def _bounded(table: OrderedDict[str, Any]) -> None:
    while len(table) > _MAX_TRACKED:
        table.popitem(last=False)
