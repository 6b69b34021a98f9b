"""Secrets (provider API keys) encrypted at rest, and the store contract routing reads them through.

A routing deployment names its key by reference (``{secret = "NAME"}``), never inline; the value
lives here, sealed with AES-256-GCM (``cryptography``'s AEAD). The secret's name is the associated
data, so a ciphertext copied onto another name does not open, and every seal draws a fresh random
96-bit nonce. The key comes from ``FACTORY_SECRET_KEY`` (urlsafe base64 of 32 bytes) or else the
file ``<data_dir>/secret.key``, created on first use readable by its owner only; a key file anyone
else can read, or that is a link or not a plain file, is refused rather than trusted.

No message here ever holds a value or a key: errors name the secret and say what to do.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import errno
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from factory.errors import ConfigError, InputError
from observability.text import unstorable

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_VALUE_BYTES = 16 * 1024
KEY_FILE = "secret.key"
NONCE_BYTES = 12  # 96 bits: GCM's own nonce size
_AAD = b"factory-secret/v1:"  # the name is bound under this label: a ciphertext opens for its own name only
_GENERATE = 'python -c "import secrets,base64;print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"'
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")  # 32 bytes in urlsafe base64, padding optional


def check_name(name: str) -> str:
    """``name`` if it can name a secret, else ``InputError`` saying what a name may hold."""
    if NAME_PATTERN.fullmatch(name):
        return name
    shown = f"{name!r}" if len(name) <= 64 and name.isprintable() else f"of {len(name)} characters"
    raise InputError(
        f"the secret name {shown} is not valid; a name starts with a letter or '_', then up to 63 letters,"
        " digits, '_', '.' or '-' (e.g. OPENAI_API_KEY)"
    )


def check_value(name: str, value: str) -> str:
    """``value`` if it can be stored as the secret ``name``, else ``InputError`` (never quoting it)."""
    if not value.strip():
        raise InputError(f"the value of secret {name!r} is empty; give the secret itself")
    if problem := unstorable(value):  # a NUL or a lone surrogate: not text that can be encrypted and read back
        raise InputError(f"the value of secret {name!r} {problem}")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise InputError(f"the value of secret {name!r} is over {MAX_VALUE_BYTES} bytes; a secret is a key, not a file")
    return value


def check_by(by: str) -> str:
    """Who changed a secret: a non-empty name of at most 200 characters."""
    who = by.strip()
    if not who or len(who) > 200:
        raise InputError("who changes the secret must be named (1 to 200 characters); give --by")
    return who


def parse_key(text: str, source: str, *, fix: str = f"generate one with: {_GENERATE}") -> bytes:
    """The 32 key bytes of ``text`` (urlsafe base64), else ``ConfigError`` naming ``source`` and
    ``fix`` (by default, how to make a key); the text itself is never shown."""
    text = text.strip()
    if _KEY_TEXT.fullmatch(text):
        try:
            key = base64.urlsafe_b64decode(text.rstrip("=") + "=")
        except (binascii.Error, ValueError):  # pragma: no cover - the pattern admits only valid base64
            key = b""
        if len(key) == 32:
            return key
    raise ConfigError(f"{source} is not a 32-byte key in urlsafe base64 (44 characters ending in '='); {fix}")


@dataclass(frozen=True)
class Sealed:
    """A secret as stored: its nonce and the AES-GCM ciphertext (with its 16-byte tag)."""

    nonce: bytes
    ciphertext: bytes


class SecretBox:
    """AES-256-GCM sealing bound to a secret's name. Holds the key; its repr does not show it."""

    def __init__(self, key: bytes, *, source: str = "the key") -> None:
        if len(key) != 32:
            raise ConfigError(f"{source} must be 32 bytes (AES-256); generate one with: {_GENERATE}")
        self._aead = AESGCM(key)
        self.source = source  # where the key came from, for the message when a ciphertext does not open

    @classmethod
    def generate(cls) -> SecretBox:
        """A box with a fresh random key (tests, and the in-memory store)."""
        return cls(AESGCM.generate_key(bit_length=256), source="a generated key")

    @classmethod
    def load(cls, data_dir: Path, key: SecretStr | str | None = None, *, create: bool = True) -> SecretBox:
        """The box of ``key`` (FACTORY_SECRET_KEY) if given, else of ``<data_dir>/secret.key``, which
        is created (owner-only) when missing and ``create`` (only storing a secret may create it: a
        new key opens none of the secrets already stored)."""
        if key is not None:
            text = key.get_secret_value() if isinstance(key, SecretStr) else key
            return cls(parse_key(text, "FACTORY_SECRET_KEY"), source="FACTORY_SECRET_KEY")
        path = data_dir / KEY_FILE
        fix = "restore it from a backup (the secrets sealed with it open with no other key), or remove it to start anew"
        if create:
            return cls(parse_key(_read_or_create_key(path), f"the key file {path}", fix=fix), source=str(path))
        try:
            text = _read_key(path)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"stored secrets cannot be opened here: there is no key ({path} is missing and FACTORY_SECRET_KEY is"
                " not set); set FACTORY_SECRET_KEY, or copy secret.key (mode 600) from where the secrets were stored"
            ) from exc
        return cls(parse_key(text, f"the key file {path}", fix=fix), source=str(path))

    def seal(self, name: str, value: str) -> Sealed:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return Sealed(nonce, self._aead.encrypt(nonce, value.encode("utf-8"), _AAD + name.encode("utf-8")))

    def open(self, name: str, sealed: Sealed) -> str:
        """The value sealed for ``name``; ``ConfigError`` if it does not authenticate (another key, or
        a ciphertext altered or moved from another name)."""
        try:
            plain = self._aead.decrypt(sealed.nonce, sealed.ciphertext, _AAD + name.encode("utf-8"))
        except (InvalidTag, ValueError) as exc:
            raise ConfigError(
                f"the secret {name!r} cannot be decrypted with the key from {self.source}: the key changed"
                " (FACTORY_SECRET_KEY or secret.key) or the stored secret was altered; restore the key it was"
                f" stored with, or store it again with `factory secrets set {name}`"
            ) from exc
        return plain.decode("utf-8")


def _read_or_create_key(path: Path) -> str:
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode("ascii") + "\n"
    # Written whole to an owner-only temporary file (mkstemp: O_CREAT|O_EXCL, mode 0600), then linked
    # into place: the key file never exists partly written, and never with wider permissions. Two
    # processes creating it at once: one link wins, the other reads the winner's key.
    fd, tmp = tempfile.mkstemp(prefix=".secret.key.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_key(path)
        except OSError as exc:  # a file system without hard links: create it exclusively in place
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            _create_exclusively(path, text)
    finally:
        os.unlink(tmp)
    _sync_dir(path.parent)  # losing the key in a crash would lose every secret sealed with it
    return text


def _create_exclusively(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key(path: Path) -> str:
    """The key file's text; refused (``ConfigError``) if a link, not a plain file, not the user's own,
    or readable or writable by anyone but its owner. ``FileNotFoundError`` when there is none."""
    try:
        # O_NOFOLLOW: a symlink is refused, never followed; O_NONBLOCK: a FIFO planted there cannot hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"the key file {path} is a symbolic link; it must be a plain file: put the key itself there"
                " (mode 600) or give it in FACTORY_SECRET_KEY"
            ) from exc
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(f"the key file {path} cannot be read ({exc.strerror}); fix its permissions") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the key file {path} is not a plain file; remove it or give FACTORY_SECRET_KEY")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"the key file {path} belongs to another user; it must be yours (chown it)")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"the key file {path} has mode {stat.S_IMODE(info.st_mode):03o}: others may read or change it;"
                f" run `chmod 600 {path}`"
            )
        data = os.read(fd, 1024)  # a key is 45 bytes; a longer file is refused by parse_key
    finally:
        os.close(fd)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return ""  # parse_key refuses it with how to make a key


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a secret: never its value."""

    name: str
    updated_at: datetime
    updated_by: str


class SecretStore(Protocol):
    """Named secrets, encrypted at rest. ``get`` is one lookup: routing resolves keys through it."""

    async def put(self, name: str, value: str, *, by: str) -> None: ...

    async def get(self, name: str) -> str | None: ...

    async def list(self) -> builtins.list[SecretInfo]: ...

    async def delete(self, name: str) -> bool: ...


class InMemorySecretStore:
    """``SecretStore`` in a dict, sealed with a box like the real one (a generated key by default)."""

    def __init__(self, box: SecretBox | None = None) -> None:
        self._box = box or SecretBox.generate()
        self._rows: dict[str, tuple[Sealed, SecretInfo]] = {}

    async def put(self, name: str, value: str, *, by: str) -> None:
        check_value(check_name(name), value)
        info = SecretInfo(name, datetime.now(UTC), check_by(by))
        self._rows[name] = (self._box.seal(name, value), info)

    async def get(self, name: str) -> str | None:
        row = self._rows.get(check_name(name))
        return None if row is None else self._box.open(name, row[0])

    async def list(self) -> builtins.list[SecretInfo]:
        return [info for _, (_, info) in sorted(self._rows.items())]

    async def delete(self, name: str) -> bool:
        return self._rows.pop(check_name(name), None) is not None


__all__ = [
    "KEY_FILE",
    "MAX_VALUE_BYTES",
    "InMemorySecretStore",
    "Sealed",
    "SecretBox",
    "SecretInfo",
    "SecretStore",
    "check_by",
    "check_name",
    "check_value",
    "parse_key",
]
