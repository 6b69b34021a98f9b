"""API tokens for the machine front doors (REST API, MCP server): a name, a scope, and only a hash.

A raw token is ``fct_`` + ``secrets.token_urlsafe(32)``: 256 random bits in 43 URL-safe characters.
It is shown once, when it is made; the store keeps its SHA-256 (hex) and the first 8 characters
after ``fct_`` (the *prefix*, to tell tokens apart in a list), never the token itself.

Why a fast hash, when passwords get scrypt (``factory.users``): a slow, salted hash exists to make
guessing a low-entropy secret expensive. A token has 256 bits of entropy, so no dictionary or
brute force reaches it whatever the hash costs, and a plain SHA-256 is as safe while letting every
request be checked in microseconds and looked up by an index (no salt: the hash is the lookup key).

``verify`` refuses anything not shaped like a token (length, then charset) before any lookup, so
garbage in an ``Authorization`` header never reaches the database. It compares the stored hash in
constant time, never logs the raw token, and records ``last_used_at`` at most once a minute per
token, so a busy client does not cause a write per request.

Scopes are ordered ``viewer`` < ``operator`` < ``admin``: a token may do what its scope or any lower
one allows. The ``TokenStore`` contract lives here with its in-memory twin; ``factory.tokens_pg`` is
the PostgreSQL store.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from factory.errors import InputError, TokenNotFound
from factory.users import NAME_PATTERN, check_name

RAW_PREFIX = "fct_"
RAW_BYTES = 32
RAW_LENGTH = len(RAW_PREFIX) + 43  # token_urlsafe(32) is always 43 characters (no padding)
RAW_PATTERN = re.compile(r"fct_[A-Za-z0-9_-]{43}")
ID_PATTERN = re.compile(r"tok_[0-9a-f]{12}")
PREFIX_CHARS = 8
#: ``last_used_at`` is written at most this often per token.
TOUCH_EVERY = timedelta(minutes=1)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scope(StrEnum):
    """What a token may do: ``viewer`` reads, ``operator`` also acts (runs, decisions), ``admin`` also
    manages the factory (routing, secrets, accounts, tokens)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Scope) -> bool:
        """Whether a token of this scope may do what needs ``needed`` (its own scope or a lower one)."""
        return self.rank >= Scope(needed).rank


_RANKS = {Scope.VIEWER: 0, Scope.OPERATOR: 1, Scope.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token as lists and front doors see it: never the raw token, never its hash."""

    id: str  # "tok_" + 12 hex digits, random
    name: str
    scope: Scope
    user: str | None  # the operator it acts for, recorded with what it decides
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    prefix: str = ""  # the first 8 characters after "fct_", to recognise a token in a list

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def actor(self) -> str:
        """Who a decision made with this token is recorded as: ``ana (token ci-bot)`` or ``token ci-bot``."""
        return f"{self.user} (token {self.name})" if self.user else f"token {self.name}"


def parse_scope(text: str) -> Scope:
    """``text`` as a ``Scope``, else ``InputError`` naming the scopes there are."""
    try:
        return Scope(text)
    except ValueError:
        shown = repr(text) if len(text) <= 20 and text.isprintable() else "given"
        raise InputError(f"the scope {shown} is not viewer, operator or admin") from None


def check_token_name(name: str) -> str:
    """``name`` if it can name a token (as an operator name can, but not shaped like a token id),
    else ``InputError`` saying what a name may hold."""
    rule = "a token name is 1 to 64 letters (a-z, A-Z), digits, '.', '_', '-' or '@' (e.g. ci-bot)"
    if ID_PATTERN.fullmatch(name):
        raise InputError(f"the token name {name!r} looks like a token id (tok_ and 12 hex digits); choose another")
    if NAME_PATTERN.fullmatch(name):
        return name
    if not name:
        raise InputError(f"the token name is empty; {rule}")
    if len(name) > 64:
        raise InputError(f"the token name has {len(name)} characters; {rule}")
    position, char = next((i, c) for i, c in enumerate(name) if not NAME_PATTERN.fullmatch(c))
    shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
    raise InputError(f"the token name holds {shown} (character {position + 1}); {rule}")


def check_user(user: str | None) -> str | None:
    """The operator a token acts for (``None``: nobody in particular), checked as an operator name."""
    return None if user is None else check_name(user)


def check_name_or_id(name_or_id: str) -> str:
    """What ``revoke`` is given: a token id or a token name, else ``InputError``."""
    if ID_PATTERN.fullmatch(name_or_id) or NAME_PATTERN.fullmatch(name_or_id):
        return name_or_id
    shown = repr(name_or_id) if len(name_or_id) <= 70 and name_or_id.isprintable() else "given"
    raise InputError(f"{shown} is neither a token name nor a token id; see `factory tokens list`")


def new_raw() -> str:
    """A fresh raw token: ``fct_`` and 43 URL-safe characters."""
    return RAW_PREFIX + secrets.token_urlsafe(RAW_BYTES)


def new_id() -> str:
    return "tok_" + secrets.token_hex(6)


def well_formed(raw: str) -> bool:
    """Whether ``raw`` is shaped like a token (checked by length first, so a huge header costs nothing)."""
    return len(raw) == RAW_LENGTH and RAW_PATTERN.fullmatch(raw) is not None


def digest(raw: str) -> str:
    """The SHA-256 (hex) that is stored for a raw token."""
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def prefix_of(raw: str) -> str:
    return raw[len(RAW_PREFIX) : len(RAW_PREFIX) + PREFIX_CHARS]


def same_digest(stored: str, computed: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(stored.encode("ascii"), computed.encode("ascii"))


def active_exists(name: str) -> InputError:
    """The error for creating a token whose name an active token has."""
    return InputError(
        f"an active token named {name!r} exists already; revoke it first with `factory tokens revoke {name}`,"
        " or choose another name"
    )


def not_found(name_or_id: str) -> TokenNotFound:
    return TokenNotFound(f"no active token {name_or_id!r}; see `factory tokens list` (revoked ones: --all)")


class TokenStore(Protocol):
    """API tokens. Nothing here returns a stored hash; only ``create`` returns a raw token, once."""

    async def create(self, name: str, scope: Scope | str, *, user: str | None = None) -> tuple[ApiToken, str]:
        """A new token and its raw secret (shown to the caller once, never stored). ``InputError`` on a
        bad name, scope or user, or when an active token has that name already (revoke it first)."""
        ...

    async def verify(self, raw: str) -> ApiToken | None:
        """The active token ``raw`` is, else None (malformed, unknown or revoked). Notes the use."""
        ...

    async def list(self, *, include_revoked: bool = False) -> builtins.list[ApiToken]:
        """The active tokens (and the revoked ones with ``include_revoked``), by name, then age."""
        ...

    async def revoke(self, name_or_id: str) -> ApiToken:
        """Revoke the active token with that name or id; ``TokenNotFound`` if there is none."""
        ...


@dataclass(frozen=True, slots=True)
class _Row:
    token: ApiToken
    sha256: str


class InMemoryTokenStore:
    """``TokenStore`` in a dict, behaving as the PostgreSQL one does (for tests and the API's own tests).
    ``clock`` tells the time, so the once-a-minute ``last_used_at`` can be tested without waiting."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._rows: dict[str, _Row] = {}  # by id
        self._clock = clock

    async def create(self, name: str, scope: Scope | str, *, user: str | None = None) -> tuple[ApiToken, str]:
        name, checked, user = check_token_name(name), parse_scope(scope), check_user(user)
        if any(r.token.name == name and r.token.active for r in self._rows.values()):
            raise active_exists(name)
        raw = new_raw()
        token = ApiToken(new_id(), name, checked, user, self._clock(), None, None, prefix_of(raw))
        self._rows[token.id] = _Row(token, digest(raw))
        return token, raw

    async def verify(self, raw: str) -> ApiToken | None:
        if not well_formed(raw):
            return None
        wanted = digest(raw)
        found = None
        for row in self._rows.values():  # every row compared, in constant time each
            if same_digest(row.sha256, wanted):
                found = row
        if found is None or not found.token.active:
            return None
        now, last = self._clock(), found.token.last_used_at
        if last is None or now - last >= TOUCH_EVERY:
            found = _Row(replace(found.token, last_used_at=now), found.sha256)
            self._rows[found.token.id] = found
        return found.token

    async def list(self, *, include_revoked: bool = False) -> builtins.list[ApiToken]:
        tokens = [r.token for r in self._rows.values() if include_revoked or r.token.active]
        return sorted(tokens, key=lambda t: (t.name.encode(), t.created_at, t.id))

    async def revoke(self, name_or_id: str) -> ApiToken:
        key = check_name_or_id(name_or_id)
        for row in self._rows.values():
            if row.token.active and key in (row.token.id, row.token.name):
                revoked = replace(row.token, revoked_at=self._clock())
                self._rows[revoked.id] = _Row(revoked, row.sha256)
                return revoked
        raise not_found(name_or_id)

    def stored_digest(self, token_id: str) -> str | None:
        """The stored hash (for tests of what is kept)."""
        row = self._rows.get(token_id)
        return row.sha256 if row else None
