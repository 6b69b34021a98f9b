"""The secret box (AES-256-GCM bound to names), its key sources, input checks and the in-memory store."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from factory.errors import ConfigError, InputError
from factory.settings import Settings
from routing.secrets import (
    KEY_FILE,
    MAX_VALUE_BYTES,
    InMemorySecretStore,
    SecretBox,
    check_name,
    check_value,
    parse_key,
)

VALUE = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
GENERATE = "base64.urlsafe_b64encode(secrets.token_bytes(32))"


def _key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def test_seal_and_open_round_trip_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox.generate()
    one, two = box.seal("OPENAI_API_KEY", VALUE), box.seal("OPENAI_API_KEY", VALUE)
    assert len(one.nonce) == 12 and one.nonce != two.nonce and one.ciphertext != two.ciphertext
    assert VALUE.encode() not in one.ciphertext
    assert box.open("OPENAI_API_KEY", one) == VALUE == box.open("OPENAI_API_KEY", two)
    assert box.open("k", box.seal("k", "ünïcødé ✓")) == "ünïcødé ✓"


def _refused(excinfo: pytest.ExceptionInfo[ConfigError], name: str) -> str:
    message = str(excinfo.value)
    assert f"secret {name!r}" in message and "the key changed" in message and VALUE not in message
    return message


@pytest.mark.parametrize("where", ["ciphertext", "tag", "nonce"])
def test_an_altered_secret_does_not_open(where: str) -> None:
    box = SecretBox.generate()
    sealed = box.seal("K", VALUE)
    if where == "nonce":
        sealed = replace(sealed, nonce=bytes([sealed.nonce[0] ^ 1]) + sealed.nonce[1:])
    else:
        at = 0 if where == "ciphertext" else len(sealed.ciphertext) - 1  # the last 16 bytes are the tag
        data = bytearray(sealed.ciphertext)
        data[at] ^= 0x01
        sealed = replace(sealed, ciphertext=bytes(data))
    with pytest.raises(ConfigError) as excinfo:
        box.open("K", sealed)
    _refused(excinfo, "K")


def test_a_ciphertext_moved_to_another_name_does_not_open() -> None:
    box = SecretBox.generate()
    sealed = box.seal("OPENAI_API_KEY", VALUE)
    with pytest.raises(ConfigError) as excinfo:
        box.open("ANTHROPIC_API_KEY", sealed)
    _refused(excinfo, "ANTHROPIC_API_KEY")


def test_another_key_does_not_open_and_says_the_key_changed(tmp_path: Path) -> None:
    sealed = SecretBox.load(tmp_path, _key_text()).seal("K", VALUE)
    with pytest.raises(ConfigError) as excinfo:
        SecretBox.load(tmp_path, SecretStr(_key_text())).open("K", sealed)
    assert "FACTORY_SECRET_KEY" in _refused(excinfo, "K")


def test_the_key_file_is_created_owner_only_even_under_a_permissive_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    old = os.umask(0)
    try:
        box = SecretBox.load(data_dir)
    finally:
        os.umask(old)
    path = data_dir / KEY_FILE
    info = path.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert len(base64.urlsafe_b64decode(path.read_text().strip())) == 32
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILE]  # no temporary file left behind
    # The next process loads the same key: what one sealed, the other opens.
    assert SecretBox.load(data_dir).open("K", box.seal("K", VALUE)) == VALUE


def test_processes_creating_the_key_at_once_agree_on_one(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        boxes = list(pool.map(lambda _: SecretBox.load(tmp_path), range(16)))
    sealed = boxes[0].seal("K", VALUE)
    assert all(b.open("K", sealed) == VALUE for b in boxes)
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660])
def test_a_key_file_others_can_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    SecretBox.load(tmp_path)
    (tmp_path / KEY_FILE).chmod(mode)
    with pytest.raises(ConfigError, match=rf"mode {mode:03o}.*chmod 600"):
        SecretBox.load(tmp_path)


def test_a_symlinked_key_file_is_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    SecretBox.load(elsewhere)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / KEY_FILE).symlink_to(elsewhere / KEY_FILE)
    with pytest.raises(ConfigError, match="symbolic link"):
        SecretBox.load(data_dir)
    # A dangling link is refused too: no key is written through it to where it points.
    (data_dir / KEY_FILE).unlink()
    (data_dir / KEY_FILE).symlink_to(tmp_path / "target.key")
    with pytest.raises(ConfigError, match="symbolic link"):
        SecretBox.load(data_dir)
    assert not (tmp_path / "target.key").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_key_file_that_is_not_a_plain_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / KEY_FILE
    if kind == "fifo":
        os.mkfifo(path, 0o600)  # opening it for reading must not wait for a writer
    else:
        path.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a plain file"):
        SecretBox.load(tmp_path)


def test_a_corrupt_key_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_text("not-a-key-but-maybe-something-private\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as excinfo:
        SecretBox.load(tmp_path)
    message = str(excinfo.value)
    assert str(path) in message and "restore it from a backup" in message and "something-private" not in message


def test_a_key_from_the_environment_is_used_and_no_key_file_is_made(tmp_path: Path) -> None:
    key = _key_text()
    sealed = SecretBox.load(tmp_path, SecretStr(key)).seal("K", VALUE)
    assert SecretBox.load(tmp_path, key.rstrip("=")).open("K", sealed) == VALUE  # padding optional
    assert not (tmp_path / KEY_FILE).exists()


@pytest.mark.parametrize(
    "bad",
    [
        "hunter2-not-a-key",
        base64.urlsafe_b64encode(b"\x01" * 16).decode(),  # valid base64 of a 128-bit key: too short
        base64.urlsafe_b64encode(b"\x01" * 33).decode(),
        base64.b64encode(b"\xfb\xff" * 16).decode(),  # standard base64 ('+', '/'), not urlsafe
        "",
    ],
)
def test_a_bad_environment_key_says_how_to_make_one_without_showing_it(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        SecretBox.load(tmp_path, SecretStr(bad))
    message = str(excinfo.value)
    assert "FACTORY_SECRET_KEY" in message and GENERATE in message and "32-byte" in message
    assert not bad or bad not in message
    assert not (tmp_path / KEY_FILE).exists()


def test_the_key_is_a_setting_read_from_factory_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = _key_text()
    monkeypatch.setenv("FACTORY_SECRET_KEY", key)
    settings = Settings()
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == key
    assert key not in repr(settings) and key not in str(settings.model_dump())
    assert len(parse_key(settings.secret_key.get_secret_value(), "FACTORY_SECRET_KEY")) == 32


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "_x", "a", "vllm.box-1_key", "A" * 64])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "1KEY", "-k", ".k", "has space", "k/v", "ключ", "A" * 65, "k\n", "k\x1b[2J"])
def test_bad_names_are_input_errors_saying_what_a_name_is(name: str) -> None:
    with pytest.raises(InputError, match="starts with a letter or '_'") as excinfo:
        check_name(name)
    assert "\x1b" not in str(excinfo.value) and "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "is empty"),
        (" \n\t", "is empty"),
        (VALUE + "\x00", "NUL"),
        (VALUE + "\ud800", "lone surrogate"),
        (VALUE + "x" * MAX_VALUE_BYTES, f"over {MAX_VALUE_BYTES} bytes"),
    ],
)
def test_bad_values_are_input_errors_that_never_quote_the_value(value: str, why: str) -> None:
    with pytest.raises(InputError, match=why) as excinfo:
        check_value("K", value)
    assert "'K'" in str(excinfo.value) and VALUE not in str(excinfo.value)


def test_a_value_of_exactly_the_limit_is_accepted() -> None:
    value = "é" * (MAX_VALUE_BYTES // 2)  # two bytes each in UTF-8
    assert check_value("K", value) == value


def test_the_box_shows_no_key() -> None:
    key = secrets.token_bytes(32)
    box = SecretBox(key)
    shown = repr(box) + str(vars(box))
    assert base64.urlsafe_b64encode(key).decode() not in shown and key.hex() not in shown


async def test_in_memory_store_round_trip_list_and_delete() -> None:
    store = InMemorySecretStore()
    assert await store.get("K") is None and await store.list() == []
    await store.put("K", VALUE, by="ana")
    await store.put("A", "other", by="ana")
    await store.put("K", VALUE + "2", by="bo")
    assert await store.get("K") == VALUE + "2"
    assert [(i.name, i.updated_by) for i in await store.list()] == [("A", "ana"), ("K", "bo")]
    assert VALUE not in repr(await store.list())
    assert await store.delete("K") is True and await store.delete("K") is False
    assert await store.get("K") is None
    with pytest.raises(InputError):
        await store.put("bad name", VALUE, by="ana")
    with pytest.raises(InputError):
        await store.put("K", "", by="ana")
    with pytest.raises(InputError):
        await store.get("bad name")


async def test_in_memory_store_keeps_values_sealed() -> None:
    store = InMemorySecretStore()
    await store.put("K", VALUE, by="ana")
    assert VALUE not in repr(vars(store))
