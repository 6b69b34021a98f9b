"""Operator accounts for the chat's login: names, roles, and passwords kept only as scrypt hashes.

A password is hashed with ``hashlib.scrypt`` (n=2**15, r=8, p=1, 32 bytes) and a fresh 16-byte salt,
and stored as ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``. Checking reads the parameters from the
stored string, so they can be raised later without breaking the hashes already stored. Checking a
name that has no account still derives one hash (from a dummy), so the time a login takes does not
tell whether a name exists. Passwords are NFC-normalised first: the same password typed in a
browser or a terminal may arrive composed differently.

The ``UserStore`` contract lives here with its in-memory twin; ``factory.users_pg`` is the
PostgreSQL store. No message ever quotes a password or a hash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import hashlib
import hmac
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from factory.errors import InputError

log = logging.getLogger(__name__)

SCHEME = "scrypt"
N, R, P, DKLEN = 2**15, 8, 1, 32  # ~32 MiB and ~0.1 s per hash on one core
SALT_BYTES = 16
MAXMEM = 64 * 1024 * 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
# Bounds on parameters read from a stored string: a tampered row must not make one login take
# minutes or gigabytes. Far above the defaults, so raising them later stays possible.
_MAX_MEMORY = 1024 * 1024 * 1024
_MAX_WORK = 2**24  # n * r * p; the defaults are 2**18
_SALT_BYTES = range(SALT_BYTES, 65)
_DIGEST_BYTES = range(DKLEN, 65)  # not shorter: a truncated hash would still match (it is a prefix)


class Role(StrEnum):
    """What an operator may do in the chat: ``operator`` acts (runs, decisions), ``viewer`` only reads."""

    OPERATOR = "operator"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class User:
    """An operator account as the chat sees it: never its password hash."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """A stored password hash, parsed."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __str__(self) -> str:
        b64 = base64.b64encode
        return f"{SCHEME}${self.n}${self.r}${self.p}${b64(self.salt).decode()}${b64(self.digest).decode()}"


def check_name(name: str) -> str:
    """``name`` if it can name an operator, else ``InputError`` saying what a name may hold."""
    if NAME_PATTERN.fullmatch(name):
        return name
    rule = "a name is 1 to 64 letters (a-z, A-Z), digits, '.', '_', '-' or '@' (e.g. ana or ana@example.com)"
    if not name:
        raise InputError(f"the operator name is empty; {rule}")
    if len(name) > 64:
        raise InputError(f"the operator name has {len(name)} characters; {rule}")
    position, char = next((i, c) for i, c in enumerate(name) if not NAME_PATTERN.fullmatch(c))
    shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
    raise InputError(f"the operator name holds {shown} (character {position + 1}); {rule}")


def check_role(role: str) -> Role:
    """``role`` as a ``Role``, else ``InputError`` naming the roles there are."""
    try:
        return Role(role)
    except ValueError:
        shown = repr(role) if len(role) <= 20 and role.isprintable() else "given"
        raise InputError(f"the role {shown} is not operator or viewer") from None


def check_password(password: str) -> str:
    """``password`` if it may be set, else ``InputError`` saying why (never quoting it)."""
    if len(password) < MIN_PASSWORD:
        raise InputError(f"the password has {len(password)} characters; give at least {MIN_PASSWORD}")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"the password has {len(password)} characters; give at most {MAX_PASSWORD}")
    if "\x00" in password:
        raise InputError("the password contains a NUL character; remove it")
    if not _encodable(password):
        raise InputError("the password is not UTF-8 text (it holds a lone surrogate); type it again")
    return password


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _derive(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    """scrypt of the NFC-normalised password, with room for whatever memory its parameters need."""
    data = unicodedata.normalize("NFC", password).encode("utf-8")
    maxmem = max(MAXMEM, 128 * r * (n + p) + 2**20)
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P, dklen: int = DKLEN) -> str:
    """The string to store for ``password`` (checked first): ``scrypt$n$r$p$salt$hash``, fresh salt.
    Slow on purpose: call it through ``asyncio.to_thread`` from async code."""
    check_password(password)
    _check_parameters(n, r, p)
    if dklen not in _DIGEST_BYTES:
        raise ValueError(f"a hash is {DKLEN} to 64 bytes")
    salt = secrets.token_bytes(SALT_BYTES)
    return str(ScryptHash(n, r, p, salt, _derive(password, salt, n, r, p, dklen)))


def parse_hash(stored: str) -> ScryptHash:
    """The parameters, salt and digest of a stored string, else ``ValueError`` (not quoting it)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError(f"not a {SCHEME}$n$r$p$salt$hash string")
    if not all(re.fullmatch(r"[1-9][0-9]{0,9}", part) for part in parts[1:4]):
        raise ValueError("n, r and p are not positive integers")
    n, r, p = (int(part) for part in parts[1:4])
    _check_parameters(n, r, p)
    try:
        salt, digest = (base64.b64decode(part, validate=True) for part in parts[4:])
    except binascii.Error as exc:
        raise ValueError("the salt or the hash is not base64") from exc
    if len(salt) not in _SALT_BYTES or len(digest) not in _DIGEST_BYTES:
        raise ValueError(f"the salt is not {SALT_BYTES} to 64 bytes, or the hash not {DKLEN} to 64")
    return ScryptHash(n, r, p, salt, digest)


def _check_parameters(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("scrypt needs n a power of 2 above 1, and r and p at least 1")
    if 128 * r * n > _MAX_MEMORY or n * r * p > _MAX_WORK:
        raise ValueError("the scrypt parameters ask for more memory or work than a login may take")


# What an absent account is checked against: the default parameters, so it costs what a real one does.
_DUMMY = ScryptHash(N, R, P, bytes(SALT_BYTES), bytes(DKLEN))


def password_matches(password: str, stored: str | None, *, name: str = "") -> bool:
    """Whether ``password`` is the one ``stored`` was made from. ``None`` (no such account), a password
    that could never have been set, and a malformed stored string (logged, naming ``name``) are
    all False, after deriving one hash all the same. Slow: use ``asyncio.to_thread`` in async code."""
    target = _DUMMY
    if stored is not None:
        try:
            target = parse_hash(stored)
        except ValueError as exc:
            log.warning("operator %r has an unusable password hash (%s); set a new password with"
                        " `factory users add NAME --replace`", name, exc)  # fmt: skip
            stored = None
    usable = len(password) <= MAX_PASSWORD and _encodable(password)
    derived = _derive(password if usable else "", target.salt, target.n, target.r, target.p, len(target.digest))
    return hmac.compare_digest(derived, target.digest) and stored is not None and usable


async def matches(password: str, stored: str | None, *, name: str = "") -> bool:
    """``password_matches`` off the event loop (a hash takes ~0.1 s of CPU)."""
    return await asyncio.to_thread(password_matches, password, stored, name=name)


async def new_hash(password: str) -> str:
    """``hash_password`` (default parameters) off the event loop."""
    return await asyncio.to_thread(hash_password, password)


class UserStore(Protocol):
    """Operator accounts. ``verify`` is the login check; nothing here returns a password hash."""

    async def add(self, name: str, role: str, password: str, *, replace: bool = False) -> User:
        """Create the account (``InputError`` if the name is taken, unless ``replace``, which sets a new
        role and password and keeps when it was created)."""
        ...

    async def verify(self, name: str, password: str) -> User | None:
        """The account if ``password`` is its password, else None (also for a name with no account)."""
        ...

    async def get(self, name: str) -> User | None:
        """The account named ``name``, or None (``InputError`` if it cannot be a name)."""
        ...

    async def list(self) -> builtins.list[User]:
        """Every account, by name."""
        ...

    async def remove(self, name: str) -> bool:
        """Delete the account; False if there was none."""
        ...


def taken(name: str) -> InputError:
    """The error for adding a name that has an account already."""
    return InputError(
        f"an operator named {name!r} exists already; to give it a new password and role run"
        f" `factory users add {name} --role ROLE --replace`, or choose another name"
    )


class InMemoryUserStore:
    """``UserStore`` in a dict, hashing like the real one (for tests and the chat's own tests)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Role, str]] = {}

    async def add(self, name: str, role: str, password: str, *, replace: bool = False) -> User:
        user = User(check_name(name), check_role(role))
        hashed = await new_hash(check_password(password))
        if name in self._rows and not replace:
            raise taken(name)
        self._rows[name] = (user.role, hashed)
        return user

    async def verify(self, name: str, password: str) -> User | None:
        row = self._rows.get(name)
        if not await matches(password, row[1] if row else None, name=name) or row is None:
            return None
        return User(name, row[0])

    async def get(self, name: str) -> User | None:
        row = self._rows.get(check_name(name))
        return User(name, row[0]) if row else None

    async def list(self) -> builtins.list[User]:
        return [User(name, role) for name, (role, _) in sorted(self._rows.items())]

    async def remove(self, name: str) -> bool:
        return self._rows.pop(check_name(name), None) is not None

    def stored_hash(self, name: str) -> str | None:
        """The stored string (for tests of what is kept)."""
        row = self._rows.get(name)
        return row[1] if row else None
