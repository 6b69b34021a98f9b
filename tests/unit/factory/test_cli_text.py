"""What the CLI prints and what it accepts as text: control characters neutralised, input that is
not UTF-8 refused with one line (issue 13, items 4 and 8)."""

from __future__ import annotations

import io
import os
import sys

import pytest
import typer

from factory.cli_common import check_text_input, read_stdin, safe

CONTROLS = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))] + ["\u202e", "\u2066", "\u2028", "\udcff"]


@pytest.mark.parametrize("control", CONTROLS)
def test_every_control_is_shown_escaped_on_one_line(control: str) -> None:
    shown = safe(f"a{control}b")
    assert shown.startswith("a\\") and shown.endswith("b") and control not in shown
    assert shown.isprintable()


def test_multi_line_text_keeps_newlines_and_tabs_only() -> None:
    assert safe("one\n\ttwo\r\x1b]0;title\x07", lines=True) == "one\n\ttwo\\x0d\\x1b]0;title\\x07"
    assert safe("one\ntwo") == "one\\x0atwo"


def test_plain_text_is_untouched() -> None:
    text = "Café – naïve 数据库 🚀 'quotes' \\x1b stays as typed"
    assert safe(text) == text and safe(text, lines=True) == text


def _refusal(argv: list[str], environ: dict[str, str] | None = None, *, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(typer.Exit) as exc:
        check_text_input(argv, environ or {})
    assert exc.value.exit_code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("factory: ")
    return lines[0]


def test_argument_not_utf8_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    bad = os.fsdecode(b"\xff\xfe\x1b]0;x\x07")
    line = _refusal(["factory", "revise", "r", "--feedback", bad], capsys=capsys)
    assert "argument 4 (after --feedback) is not UTF-8 text" in line and "\x1b" not in line
    line = _refusal(["factory", "hitl", "reject", "e", f"--reason={bad}"], capsys=capsys)
    assert "the value of --reason (argument 4)" in line
    assert "argument 1 is not" in _refusal(["factory", bad], capsys=capsys)


def test_settings_not_utf8_are_refused_and_others_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    bad = os.fsdecode(b"x\xff")
    assert "FACTORY_OPERATOR" in _refusal(["factory"], {"FACTORY_OPERATOR": bad}, capsys=capsys)
    check_text_input(["factory", "run", "Café 数据库"], {"HOME": bad, "FACTORY_OPERATOR": "José"})


@pytest.mark.parametrize(
    ("data", "needle"),
    [(b"caf\xe9", "is not UTF-8 text (byte 3)"), (b"x" * 11, "longer than 10 bytes")],
)
def test_stdin_is_utf8_within_bounds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data: bytes, needle: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    with pytest.raises(typer.Exit) as exc:
        read_stdin("answer", 10)
    assert exc.value.exit_code == 2 and needle in capsys.readouterr().err


def test_stdin_text_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Café\n".encode())))
    assert read_stdin("answer", 10) == "Café\n"
