"""API tokens: scopes, the raw token's shape, what is kept of it, who a token acts as, the in-memory
store's once-a-minute use, and what ``factory tokens`` renders (never a token). The ``TokenStore``
contract over the twin and PostgreSQL is in tests/integration/test_tokens_cli.py."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from factory.cli_tokens import HEADER, created_lines, token_json, token_line
from factory.errors import InputError, TokenNotFound
from factory.tokens import (
    ApiToken,
    InMemoryTokenStore,
    Scope,
    check_name_or_id,
    check_token_name,
    digest,
    new_raw,
    parse_scope,
    prefix_of,
    well_formed,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _token(**changes: object) -> ApiToken:
    fields: dict[str, object] = {
        "id": "tok_0123456789ab",
        "name": "ci-bot",
        "scope": Scope.OPERATOR,
        "user": None,
        "created_at": T0,
        "last_used_at": None,
        "revoked_at": None,
        "prefix": "AbCdEfGh",
    } | changes
    return ApiToken(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        (Scope.VIEWER, {Scope.VIEWER}),
        (Scope.OPERATOR, {Scope.VIEWER, Scope.OPERATOR}),
        (Scope.ADMIN, {Scope.VIEWER, Scope.OPERATOR, Scope.ADMIN}),
    ],
)
def test_a_scope_allows_itself_and_the_ones_below(scope: Scope, allowed: set[Scope]) -> None:
    assert {needed for needed in Scope if scope.allows(needed)} == allowed


def test_parse_scope_names_the_scopes() -> None:
    assert parse_scope("admin") is Scope.ADMIN and parse_scope("viewer") is Scope.VIEWER
    for bad in ["Admin", "root", "", " viewer", "x" * 100, "\x1b[2J"]:
        with pytest.raises(InputError, match="is not viewer, operator or admin") as caught:
            parse_scope(bad)
        assert "\x1b" not in str(caught.value) and "x" * 30 not in str(caught.value)


def test_a_raw_token_is_fct_and_256_random_bits() -> None:
    raws = {new_raw() for _ in range(50)}
    assert len(raws) == 50
    for raw in raws:
        assert raw.startswith("fct_") and len(raw) == 47 and well_formed(raw)
    raw = raws.pop()
    assert digest(raw) == hashlib.sha256(raw.encode()).hexdigest() and prefix_of(raw) == raw[4:12]


@pytest.mark.parametrize(
    "bad",
    ["", "fct_", "fct_abc", "Bearer fct_" + "a" * 43, "fct_" + "a" * 42, "fct_" + "a" * 44, "fct_" + "a" * 42 + "=",
     "fct_" + "a" * 42 + "/", "fct_" + "a" * 42 + "\n", "FCT_" + "a" * 43, "xct_" + "a" * 43, "fct_" + "é" * 43,
     "fct_" + "a" * 10**6],
)  # fmt: skip
def test_anything_not_shaped_like_a_token_is_refused(bad: str) -> None:
    assert not well_formed(bad)


def test_token_names_are_checked_and_cannot_look_like_an_id() -> None:
    assert check_token_name("ci-bot") == "ci-bot" and check_token_name("a" * 64) == "a" * 64
    for bad, said in [
        ("", "is empty"),
        ("a" * 65, "has 65 characters"),
        ("ci bot", "' ' (character 3)"),
        ("ci\x1bbot", "U+001B (character 3)"),
        ("tok_0123456789ab", "looks like a token id"),
    ]:
        with pytest.raises(InputError, match="token name") as caught:
            check_token_name(bad)
        assert said in str(caught.value)
    assert check_token_name("tok_x") == "tok_x"  # only the exact shape of an id is refused
    assert check_name_or_id("tok_0123456789ab") == "tok_0123456789ab" and check_name_or_id("ci-bot") == "ci-bot"
    with pytest.raises(InputError, match="neither a token name nor a token id"):
        check_name_or_id("ci bot")


def test_actor_names_the_operator_and_the_token() -> None:
    assert _token(user="ana").actor == "ana (token ci-bot)"
    assert _token().actor == "token ci-bot"
    assert _token().active and not _token(revoked_at=T0).active


async def test_in_memory_use_is_noted_at_most_once_a_minute() -> None:
    clock = Clock()
    store = InMemoryTokenStore(clock=clock)
    made, raw = await store.create("ci-bot", "operator", user="ana")
    assert made.created_at == T0 and made.last_used_at is None and made.prefix == raw[4:12]
    assert store.stored_digest(made.id) == digest(raw)
    first = await store.verify(raw)
    assert first is not None and first.last_used_at == T0
    clock.now = T0 + timedelta(seconds=59)
    again = await store.verify(raw)
    assert again is not None and again.last_used_at == T0
    clock.now = T0 + timedelta(seconds=60)
    later = await store.verify(raw)
    assert later is not None and later.last_used_at == T0 + timedelta(seconds=60)
    [listed] = await store.list()
    assert listed.last_used_at == T0 + timedelta(seconds=60)


async def test_in_memory_revoke_stamps_the_time_and_refuses_the_token() -> None:
    clock = Clock()
    store = InMemoryTokenStore(clock=clock)
    made, raw = await store.create("ci-bot", Scope.VIEWER)
    clock.now = T0 + timedelta(hours=1)
    revoked = await store.revoke(made.id)
    assert revoked.revoked_at == T0 + timedelta(hours=1) and not revoked.active
    assert await store.verify(raw) is None
    with pytest.raises(TokenNotFound, match="no active token 'ci-bot'"):
        await store.revoke("ci-bot")


def test_a_list_row_and_its_json_show_the_prefix_never_more() -> None:
    token = _token(user="ana", last_used_at=T0 + timedelta(minutes=5))
    line = token_line(token)
    for part in ["ci-bot", "tok_0123456789ab", "fct_AbCdEfGh...", "operator", "ana", "2026-01-02 03:04Z",
                 "2026-01-02 03:09Z"]:  # fmt: skip
        assert part in line
    assert HEADER.split()[:3] == ["NAME", "ID", "PREFIX"]
    assert token_line(_token()).split()[-3:] == ["03:04Z", "never", "-"]
    assert token_json(token) == {
        "id": "tok_0123456789ab",
        "name": "ci-bot",
        "scope": "operator",
        "user": "ana",
        "prefix": "fct_AbCdEfGh",
        "created_at": "2026-01-02T03:04:05+00:00",
        "last_used_at": "2026-01-02T03:09:05+00:00",
        "revoked_at": None,
        "active": True,
    }


def test_create_prints_the_token_alone_on_one_line_and_says_it_is_shown_once() -> None:
    raw = new_raw()
    lines = created_lines(_token(user="ana", prefix=raw[4:12]), raw)
    assert lines[0] == "created token ci-bot (tok_0123456789ab), scope operator, acting for ana"
    assert lines[1] == raw and sum(raw in line for line in lines) == 1
    assert "never again" in lines[2]
    assert "Authorization: Bearer <token>" in lines[3] and "FACTORY_TOKEN" in lines[3]
