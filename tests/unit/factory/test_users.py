"""Operator accounts: scrypt hashing and checking, validation, and the in-memory store's login check."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

import factory.users as users
from factory.errors import InputError
from factory.users import (
    InMemoryUserStore,
    Role,
    User,
    check_name,
    check_password,
    check_role,
    hash_password,
    parse_hash,
    password_matches,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    """Every scrypt derivation made, as (n, r, p, dklen): the work a login does is the behaviour here."""
    made: list[tuple[int, int, int, int]] = []
    real: Callable[..., bytes] = users._derive

    def counting(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        made.append((n, r, p, dklen))
        return real(password, salt, n, r, p, dklen)

    monkeypatch.setattr(users, "_derive", counting)
    return made


def test_stored_form_holds_parameters_salt_and_hash_not_the_password(stored: str) -> None:
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "32768", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert PASSWORD not in stored
    expected = hashlib.scrypt(
        PASSWORD.encode(), salt=base64.b64decode(salt), n=2**15, r=8, p=1, dklen=32, maxmem=64 * 1024 * 1024
    )
    assert base64.b64decode(digest) == expected


def test_each_hash_has_its_own_salt() -> None:
    first, second = hash_password(PASSWORD, n=2**10), hash_password(PASSWORD, n=2**10)
    assert parse_hash(first).salt != parse_hash(second).salt and first != second


def test_right_password_matches_and_wrong_ones_do_not(stored: str) -> None:
    assert password_matches(PASSWORD, stored)
    assert not password_matches(PASSWORD + " ", stored)
    assert not password_matches(PASSWORD.upper(), stored)
    assert not password_matches("", stored)


def test_the_same_password_composed_differently_matches() -> None:
    composed, decomposed = "caf\u00e9-secret", "cafe\u0301-secret"
    assert password_matches(decomposed, hash_password(composed, n=2**10))


def test_parameters_are_read_from_the_stored_string(derivations: list[tuple[int, int, int, int]]) -> None:
    other = hash_password(PASSWORD, n=2**12, r=4, p=2, dklen=48)
    derivations.clear()
    assert password_matches(PASSWORD, other)
    assert derivations == [(2**12, 4, 2, 48)]
    # Parameters that need more than the default 64 MiB of memory still verify (they may be raised later).
    stronger = hash_password(PASSWORD, n=2**16, r=8, p=1)
    assert password_matches(PASSWORD, stronger)


def test_a_parameter_changed_in_the_stored_string_no_longer_matches() -> None:
    stored = hash_password(PASSWORD, n=2**12)
    assert password_matches(PASSWORD, stored)
    assert not password_matches(PASSWORD, stored.replace("scrypt$4096$", "scrypt$2048$", 1))
    assert not password_matches(PASSWORD, stored.replace("$8$1$", "$8$2$", 1))


def _with_digest(stored: str, change: Callable[[bytes], bytes]) -> str:
    head, digest = stored.rsplit("$", 1)
    return f"{head}${base64.b64encode(change(base64.b64decode(digest))).decode()}"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda s: _with_digest(s, lambda d: bytes([d[0] ^ 1]) + d[1:]), id="one-bit-of-hash"),
        pytest.param(lambda s: _with_digest(s, lambda d: d[:-1]), id="truncated-hash"),  # a prefix of the key
        pytest.param(lambda s: _with_digest(s, lambda d: d + b"\0"), id="lengthened-hash"),
        pytest.param(lambda s: s.replace(s.split("$")[4], base64.b64encode(bytes(16)).decode()), id="other-salt"),
        pytest.param(lambda s: s.replace("scrypt$", "bcrypt$", 1), id="other-scheme"),
        pytest.param(lambda s: s.rsplit("$", 1)[0], id="missing-field"),
        pytest.param(lambda s: s[:-3] + "!!=", id="not-base64"),
        pytest.param(lambda s: s.replace("$32768$", "$32767$", 1), id="n-not-power-of-2"),
        pytest.param(lambda s: s.replace("$32768$", "$1073741824$", 1), id="n-too-costly"),
        pytest.param(lambda s: s.replace("$8$1$", "$8$100000$", 1), id="p-too-costly"),
        pytest.param(lambda s: s.replace("$8$1$", "$-8$1$", 1), id="negative-r"),
        pytest.param(lambda s: PASSWORD, id="plain-password-stored"),
        pytest.param(lambda s: "", id="empty"),
    ],
)
def test_a_tampered_stored_string_never_matches(stored: str, tamper: Callable[[str], str]) -> None:
    assert password_matches(PASSWORD, stored)
    assert not password_matches(PASSWORD, tamper(stored))


def test_a_malformed_stored_string_is_logged_without_quoting_it(caplog: pytest.LogCaptureFixture) -> None:
    bad = "scrypt$32768$8$1$not-base64$" + PASSWORD
    assert not password_matches(PASSWORD, bad, name="ana")
    assert "'ana'" in caplog.text and "--replace" in caplog.text and PASSWORD not in caplog.text


def test_no_account_still_costs_one_full_hash(derivations: list[tuple[int, int, int, int]]) -> None:
    assert not password_matches(PASSWORD, None)
    assert derivations == [(2**15, 8, 1, 32)]


@pytest.mark.parametrize("name", ["ana", "Ana.B_c-d", "ana@example.com", "7", "a" * 64])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("", "is empty"),
        ("a" * 65, "has 65 characters"),
        ("ana smith", "' ' (character 4)"),
        ("ana/b", "'/' (character 4)"),
        ("jos\u00e9", "'\u00e9' (character 4)"),
        ("ana\x1b[2J", "U+001B (character 4)"),
        ("ana\x00", "U+0000 (character 4)"),
    ],
)
def test_invalid_names_say_what_a_name_holds(name: str, said: str) -> None:
    with pytest.raises(InputError) as caught:
        check_name(name)
    message = str(caught.value)
    assert said in message and "1 to 64 letters" in message and "\x1b" not in message
    assert caught.value.exit_code == 2


def test_roles() -> None:
    assert check_role("operator") is Role.OPERATOR and check_role("viewer") is Role.VIEWER
    for bad in ["admin", "Operator", "", "x" * 500]:
        with pytest.raises(InputError, match="is not operator or viewer"):
            check_role(bad)


@pytest.mark.parametrize(
    ("password", "said"),
    [
        ("short12", "has 7 characters; give at least 8"),
        ("", "has 0 characters; give at least 8"),
        ("x" * 1025, "has 1025 characters; give at most 1024"),
        ("pass\x00word", "NUL"),
        ("pass\ud800word", "lone surrogate"),
    ],
)
def test_invalid_passwords_are_refused_without_quoting_them(password: str, said: str) -> None:
    with pytest.raises(InputError) as caught:
        hash_password(password)
    message = str(caught.value)
    assert said in message and (not password or password not in message) and caught.value.exit_code == 2


def test_password_length_bounds_are_inclusive() -> None:
    assert check_password("x" * 8) == "x" * 8 and check_password("x" * 1024) == "x" * 1024


async def test_store_add_verify_get_list_remove() -> None:
    store = InMemoryUserStore()
    assert await store.add("ana", "operator", PASSWORD) == User("ana", Role.OPERATOR)
    await store.add("bo", "viewer", "another password")
    stored = store.stored_hash("ana")
    assert stored is not None and stored.startswith("scrypt$") and PASSWORD not in stored

    assert await store.verify("ana", PASSWORD) == User("ana", Role.OPERATOR)
    assert await store.verify("ana", "another password") is None
    assert await store.verify("bo", "another password") == User("bo", Role.VIEWER)
    assert await store.get("bo") == User("bo", Role.VIEWER) and await store.get("cy") is None
    assert await store.list() == [User("ana", Role.OPERATOR), User("bo", Role.VIEWER)]

    assert await store.remove("ana") is True and await store.remove("ana") is False
    assert await store.verify("ana", PASSWORD) is None


async def test_store_refuses_a_taken_name_unless_replace() -> None:
    store = InMemoryUserStore()
    await store.add("ana", "operator", PASSWORD)
    with pytest.raises(InputError, match="exists already.*--replace"):
        await store.add("ana", "viewer", "new password 2")
    assert await store.verify("ana", PASSWORD) == User("ana", Role.OPERATOR)  # nothing changed

    assert await store.add("ana", "viewer", "new password 2", replace=True) == User("ana", Role.VIEWER)
    assert await store.verify("ana", PASSWORD) is None
    assert await store.verify("ana", "new password 2") == User("ana", Role.VIEWER)


async def test_store_validates_before_storing() -> None:
    store = InMemoryUserStore()
    for args in [("bad name", "operator", PASSWORD), ("ana", "admin", PASSWORD), ("ana", "operator", "short")]:
        with pytest.raises(InputError):
            await store.add(*args)
    assert await store.list() == []


@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("nobody", PASSWORD),  # no such account
        ("bad name!", PASSWORD),  # a name no account can have
        ("ana", "x" * 5000),  # a password no account can have
        ("ana", "pass\ud800word"),  # not UTF-8 text
    ],
)
async def test_a_failed_login_costs_one_full_hash_whatever_failed(
    derivations: list[tuple[int, int, int, int]], name: str, password: str
) -> None:
    store = InMemoryUserStore()
    await store.add("ana", "operator", PASSWORD)
    derivations.clear()
    assert await store.verify(name, password) is None
    assert derivations == [(2**15, 8, 1, 32)]


def test_user_has_no_hash_field() -> None:
    fields: dict[str, Any] = User.__dataclass_fields__
    assert set(fields) == {"name", "role"}
