"""``factory tokens create|list|revoke``: the API tokens the REST API and the MCP server accept.

``create`` prints the raw token once (the database keeps only its SHA-256); ``list`` shows a short
prefix to tell tokens apart, never a token. Names, scopes and users are checked before any service
is started, so a typo costs no connection and stores nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from factory.cli_common import EXIT_INPUT, echo, err, load_settings, print_json, with_factory

if TYPE_CHECKING:
    from factory.tokens import ApiToken, Scope
    from factory.wiring import Factory

tokens_app = typer.Typer(no_args_is_help=True, help="API tokens for the REST API and the MCP server.")

Name = Annotated[str, typer.Argument(help="The token's name, e.g. ci-bot.", show_default=False)]
NameOrId = Annotated[str, typer.Argument(help="The token's name or id (tok_...).", show_default=False)]
ScopeOption = Annotated[
    str | None, typer.Option("--scope", help="viewer (reads), operator (also acts) or admin (also manages).")
]
UserOption = Annotated[str | None, typer.Option("--user", help="The operator the token acts for (recorded).")]
All = Annotated[bool, typer.Option("--all", help="Revoked tokens too.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

USAGE = "use it as the header `Authorization: Bearer <token>` with the REST API, or as FACTORY_TOKEN for `factory mcp`"


def _checked(check: Any, value: str) -> Any:
    """``check(value)``, or exit 2 with its message (before anything is started)."""
    from factory.errors import InputError

    try:
        return check(value)
    except InputError as exc:
        err(str(exc), exc.exit_code)


def _scope(scope: str | None) -> Scope:
    from factory.tokens import parse_scope

    if scope is None:
        err("give the token's scope: --scope viewer, --scope operator or --scope admin", EXIT_INPUT)
    scoped: Scope = _checked(parse_scope, scope)
    return scoped


def _when(moment: datetime | None, never: str = "-") -> str:
    return f"{moment:%Y-%m-%d %H:%M}Z" if moment is not None else never


def token_json(token: ApiToken) -> dict[str, Any]:
    """A token as ``list --json`` shows it: never the token, never its hash."""
    return {
        "id": token.id,
        "name": token.name,
        "scope": token.scope.value,
        "user": token.user,
        "prefix": f"fct_{token.prefix}",
        "created_at": token.created_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
        "active": token.active,
    }


HEADER = f"{'NAME':24} {'ID':16}  {'PREFIX':15}  {'SCOPE':8}  {'USER':16}  {'CREATED':17}  {'LAST USED':17}  REVOKED"


def token_line(token: ApiToken) -> str:
    """One row of ``list``: the token's prefix (``fct_abcdefgh...``) stands for it."""
    return (
        f"{token.name:24} {token.id:16}  {'fct_' + token.prefix + '...':15}  {token.scope.value:8}"
        f"  {token.user or '-':16}  {_when(token.created_at):17}  {_when(token.last_used_at, 'never'):17}"
        f"  {_when(token.revoked_at)}"
    )


def created_lines(token: ApiToken, raw: str) -> list[str]:
    """What ``create`` prints: what was made, the token alone on its line, and that it is shown once."""
    acting = f", acting for {token.user}" if token.user else ""
    return [
        f"created token {token.name} ({token.id}), scope {token.scope.value}{acting}",
        raw,
        "this token is shown now and never again (only its hash is stored): keep it in a secret store",
        USAGE,
    ]


@tokens_app.command("create")
def tokens_create(name: Name, scope: ScopeOption = None, user: UserOption = None, as_json: AsJson = False) -> None:
    """Create a token; it is printed once and cannot be shown again."""
    from factory.tokens import check_token_name, check_user

    name, scoped = _checked(check_token_name, name), _scope(scope)
    user = _checked(check_user, user) if user is not None else None
    settings = load_settings()

    async def go(factory: Factory) -> tuple[ApiToken, str]:
        from factory.tokens_pg import PostgresTokenStore

        return await PostgresTokenStore(factory.pool).create(name, scoped, user=user)

    token, raw = with_factory(go, settings)
    if as_json:
        print_json(
            {
                "id": token.id,
                "name": token.name,
                "scope": token.scope.value,
                "user": token.user,
                "token": raw,
                "created_at": token.created_at.isoformat(),
            }
        )
        return
    for line in created_lines(token, raw):
        echo(line)


@tokens_app.command("list")
def tokens_list(include_revoked: All = False, as_json: AsJson = False) -> None:
    """The active tokens (--all: revoked ones too): name, id, prefix, scope, user, times. Never a token."""

    async def go(factory: Factory) -> list[ApiToken]:
        from factory.tokens_pg import PostgresTokenStore

        return await PostgresTokenStore(factory.pool).list(include_revoked=include_revoked)

    tokens: list[ApiToken] = with_factory(go)
    if as_json:
        print_json([token_json(t) for t in tokens])
        return
    if not tokens:
        none = "no tokens" if include_revoked else "no active tokens"
        echo(f"{none}; create one with `factory tokens create NAME --scope viewer`")
        return
    echo(HEADER)
    for t in tokens:
        echo(token_line(t))


@tokens_app.command("revoke")
def tokens_revoke(name_or_id: NameOrId) -> None:
    """Revoke a token: the REST API and the MCP server refuse it from then on."""
    from factory.tokens import check_name_or_id

    key = _checked(check_name_or_id, name_or_id)

    async def go(factory: Factory) -> ApiToken:
        from factory.tokens_pg import PostgresTokenStore

        return await PostgresTokenStore(factory.pool).revoke(key)

    token: ApiToken = with_factory(go)
    echo(f"revoked token {token.name} ({token.id}); it is refused from now on")
