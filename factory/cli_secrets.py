"""``factory secrets set|list|delete``: the encrypted secrets that routing names keys by (issue 14).

A value never travels in argv (``ps`` would show it): ``set`` reads it from a hidden prompt on a
terminal, else from standard input. No command prints a value, not even in an error.
"""

from __future__ import annotations

import getpass
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from factory.cli_common import (
    EXIT_FAILED,
    EXIT_INPUT,
    echo,
    err,
    load_settings,
    print_json,
    read_stdin,
    who_decides,
    with_factory,
)

if TYPE_CHECKING:
    from factory.wiring import Factory
    from routing.secrets import SecretInfo

secrets_app = typer.Typer(no_args_is_help=True, help="Encrypted secrets (API keys) that routing names by reference.")

Name = Annotated[str, typer.Argument(help="The secret's name, e.g. OPENAI_API_KEY.", show_default=False)]
By = Annotated[str | None, typer.Option("--by", help="Who sets it (default: FACTORY_OPERATOR, else your user).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _name(name: str) -> str:
    """``name`` checked before anything is read or started (exit 2 if it cannot name a secret)."""
    from factory.errors import InputError
    from routing.secrets import check_name

    try:
        return check_name(name)
    except InputError as exc:
        err(str(exc), exc.exit_code)


def _value(name: str) -> str:
    """The value: from a hidden prompt on a terminal, else standard input (one value; the trailing
    newline a pipe or ``echo`` adds is not part of it). Checked, never shown."""
    from factory.errors import InputError
    from routing.secrets import MAX_VALUE_BYTES, check_value

    if sys.stdin.isatty():
        try:
            value = getpass.getpass(f"value of {name} (not shown): ")
        except (EOFError, KeyboardInterrupt):
            err("no value given; nothing was stored", EXIT_INPUT)
    else:
        value = read_stdin("secret value", MAX_VALUE_BYTES + 2)  # room for a trailing \r\n
        value = value.removesuffix("\n").removesuffix("\r")
    try:
        return check_value(name, value)
    except InputError as exc:
        err(str(exc), exc.exit_code)


# Extra arguments are accepted only to be refused without being quoted (click would echo a value typed there).
@secrets_app.command("set", context_settings={"allow_extra_args": True})
def secrets_set(ctx: typer.Context, name: Name, by: By = None) -> None:
    """Store a secret (or replace it): the value is read from a hidden prompt, or from standard input."""
    if ctx.args:
        err(
            "a secret's value is never taken from the command line (`ps` shows it to every user, and your shell's"
            " history keeps it); run `factory secrets set NAME` and type it at the prompt, or pipe it in",
            EXIT_INPUT,
        )
    name = _name(name)
    settings = load_settings()
    who = who_decides(settings, by)
    value = _value(name)

    async def go(factory: Factory) -> None:
        await factory.secrets.put(name, value, by=who)

    with_factory(go, settings)
    echo(f"stored secret {name} (encrypted)")


@secrets_app.command("list")
def secrets_list(as_json: AsJson = False) -> None:
    """The stored secrets: names, when and by whom each was last set. Never a value."""

    async def go(factory: Factory) -> list[SecretInfo]:
        return await factory.secrets.list()

    infos: list[SecretInfo] = with_factory(go)
    if as_json:
        print_json([_row(i) for i in infos])
        return
    if not infos:
        echo("no secrets stored; add one with `factory secrets set NAME`")
    for i in infos:
        echo(f"{i.name:32} updated {i.updated_at.isoformat(timespec='seconds')}  by {i.updated_by}")


@secrets_app.command("delete")
def secrets_delete(name: Name) -> None:
    """Delete a secret (routing that names it then finds no key)."""
    name = _name(name)

    async def go(factory: Factory) -> bool:
        return await factory.secrets.delete(name)

    if not with_factory(go):
        err(f"no secret {name!r} is stored; see `factory secrets list`", EXIT_FAILED)
    echo(f"deleted secret {name}")


def _row(info: SecretInfo) -> dict[str, Any]:
    row = asdict(info)
    row["updated_at"] = info.updated_at.isoformat()
    return row
