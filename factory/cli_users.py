"""``factory users add|list|remove``: the operator accounts the chat's login checks.

A password never travels in argv (``ps`` would show it): ``add`` reads it from a hidden prompt on a
terminal (twice, to catch a typo), else one line of standard input. No command prints a password or
a hash.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from factory.cli_common import EXIT_FAILED, EXIT_INPUT, echo, err, load_settings, print_json, read_stdin, with_factory

if TYPE_CHECKING:
    from factory.users import Role, User
    from factory.wiring import Factory

users_app = typer.Typer(no_args_is_help=True, help="Operator accounts for the chat's login.")

Name = Annotated[str, typer.Argument(help="The login name, e.g. ana or ana@example.com.", show_default=False)]
RoleOption = Annotated[str | None, typer.Option("--role", help="operator (acts) or viewer (reads only).")]
Replace = Annotated[bool, typer.Option("--replace", help="Set a new password and role for an existing name.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _name(name: str) -> str:
    """``name`` checked before anything is read or started (exit 2 if it cannot name an operator)."""
    from factory.errors import InputError
    from factory.users import check_name

    try:
        return check_name(name)
    except InputError as exc:
        err(str(exc), exc.exit_code)


def _role(role: str | None) -> Role:
    from factory.errors import InputError
    from factory.users import check_role

    if role is None:
        err("give the operator's role: --role operator (acts) or --role viewer (reads only)", EXIT_INPUT)
    try:
        return check_role(role)
    except InputError as exc:
        err(f"{exc}: write --role operator (acts) or --role viewer (reads only)", exc.exit_code)


def _password(name: str) -> str:
    """The password: typed twice at a hidden prompt on a terminal, else one line of standard input
    (its trailing newline is not part of it). Checked, never shown."""
    from factory.errors import InputError
    from factory.users import MAX_PASSWORD, check_password

    if sys.stdin.isatty():
        try:
            password = getpass.getpass(f"password for {name} (not shown): ")
            again = getpass.getpass("the same password again: ")
        except (EOFError, KeyboardInterrupt):
            err("no password given; nothing was stored", EXIT_INPUT)
        if password != again:
            err("the two passwords differ; nothing was stored; run the command again", EXIT_INPUT)
    else:
        text = read_stdin("password", 4 * MAX_PASSWORD + 2)  # UTF-8 takes up to 4 bytes a character
        password = text.removesuffix("\n").removesuffix("\r")
        if "\n" in password or "\r" in password:
            err("standard input holds more than one line; give the password alone, on one line", EXIT_INPUT)
    try:
        return check_password(password)
    except InputError as exc:
        err(str(exc), exc.exit_code)


# Extra arguments are accepted only to be refused without being quoted (click would echo a password typed there).
@users_app.command("add", context_settings={"allow_extra_args": True})
def users_add(ctx: typer.Context, name: Name, role: RoleOption = None, replace: Replace = False) -> None:
    """Add an operator (--replace: a new password and role); the password comes from a hidden prompt or stdin."""
    if ctx.args:
        err(
            "a password is never taken from the command line (`ps` shows it to every user, and your shell's"
            " history keeps it); run `factory users add NAME --role ROLE` and type it at the prompt, or pipe it in",
            EXIT_INPUT,
        )
    name, checked = _name(name), _role(role)
    settings = load_settings()
    password = _password(name)

    async def go(factory: Factory) -> User:
        from factory.users_pg import PostgresUserStore

        return await PostgresUserStore(factory.pool).add(name, checked, password, replace=replace)

    user: User = with_factory(go, settings)
    echo(f"operator {user.name} stored, role {user.role.value}")


@users_app.command("list")
def users_list(as_json: AsJson = False) -> None:
    """The operators: names and roles. Never a password or a hash."""

    async def go(factory: Factory) -> list[User]:
        from factory.users_pg import PostgresUserStore

        return await PostgresUserStore(factory.pool).list()

    users: list[User] = with_factory(go)
    if as_json:
        print_json([{"name": u.name, "role": u.role.value} for u in users])
        return
    if not users:
        echo("no operators; add one with `factory users add NAME --role operator`")
    for u in users:
        echo(f"{u.name:40} {u.role.value}")


@users_app.command("remove")
def users_remove(name: Name) -> None:
    """Remove an operator: the login refuses the name from then on."""
    name = _name(name)

    async def go(factory: Factory) -> bool:
        from factory.users_pg import PostgresUserStore

        return await PostgresUserStore(factory.pool).remove(name)

    if not with_factory(go):
        err(f"no operator {name!r}; see `factory users list`", EXIT_FAILED)
    echo(f"removed operator {name}")
