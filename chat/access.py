"""Who may do what in the chat, checked on the server for every action (never only hidden in the
page): an ``operator`` runs pipelines, decides and changes settings; a ``viewer`` watches."""

from __future__ import annotations

from typing import Any, Literal

from factory.users import User
from factory.users_pg import PostgresUserStore
from factory.wiring import Factory

Act = Literal["run", "decide", "settings", "chat"]
WORDS = {
    "run": "submit a requirement",
    "decide": "decide an escalation",
    "settings": "change the settings",
    "chat": "talk to a team",
}


class Refused(Exception):
    """The session's user may not do this."""


def role_of(user: Any) -> str:
    metadata = getattr(user, "metadata", None) or {}
    return str(metadata.get("role", "viewer"))


def require(user: Any, act: Act) -> None:
    """Raise ``Refused`` unless ``user`` (a Chainlit user with ``metadata.role``) may ``act``."""
    if role_of(user) != "operator":
        name = getattr(user, "identifier", "this account")
        raise Refused(
            f"{name} is a viewer and cannot {WORDS[act]}; an operator account can"
            " (`factory users add NAME --role operator`)"
        )


async def verify(factory: Factory, name: str, password: str) -> User | None:
    return await PostgresUserStore(factory.pool).verify(name, password)


async def count(factory: Factory) -> int:
    return len(await PostgresUserStore(factory.pool).list())
