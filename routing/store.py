"""The routing store: the operator's routing changes, versioned, each with who and when.

Every change is a new row (never an update): setting an alias's chain, resetting it (the alias falls
back to the sources below the store), or setting the cooldown policy. The store's layer is the latest
row of each target. ``InMemoryRoutingStore`` is the unit-test twin of ``PostgresRoutingStore``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from routing.base import CHAT_ALIASES
from routing.config import Cooldown, Deployment, RoutingChange, RoutingLayer

COOLDOWN = "cooldown"  # the target of a cooldown-policy change


class RoutingStore(Protocol):
    async def change(
        self, target: str, *, chain: list[Deployment] | None = None, cooldown: Cooldown | None = None, by: str
    ) -> RoutingChange:
        """Record one change (``chain`` and ``cooldown`` both None: a reset of ``target``)."""
        ...

    async def latest(self) -> list[RoutingChange]:
        """The latest change of every target ever changed (resets included)."""
        ...

    async def history(self, limit: int = 50) -> list[RoutingChange]:
        """The most recent changes, newest first."""
        ...


def layer_of(latest: list[RoutingChange]) -> tuple[RoutingLayer, dict[str, RoutingChange]]:
    """The store's routing layer, and the change each of its values comes from."""
    aliases = {c.target: c.chain for c in latest if c.chain is not None and c.target in CHAT_ALIASES}
    cooldown = next((c.cooldown for c in latest if c.target == COOLDOWN and c.cooldown is not None), None)
    layer = RoutingLayer.model_validate({"aliases": aliases, "cooldown": cooldown})
    origins = {c.target: c for c in latest if c.chain is not None or c.cooldown is not None}
    return layer, origins


class InMemoryRoutingStore:
    def __init__(self) -> None:
        self.changes: list[RoutingChange] = []

    async def change(
        self, target: str, *, chain: list[Deployment] | None = None, cooldown: Cooldown | None = None, by: str
    ) -> RoutingChange:
        row = RoutingChange(
            version=len(self.changes) + 1,
            target=target,
            chain=chain,
            cooldown=cooldown,
            changed_by=by,
            changed_at=datetime.now(UTC),
        )
        self.changes.append(row)
        return row

    async def latest(self) -> list[RoutingChange]:
        last: dict[str, RoutingChange] = {}
        for row in self.changes:
            last[row.target] = row
        return sorted(last.values(), key=lambda c: c.target)

    async def history(self, limit: int = 50) -> list[RoutingChange]:
        return list(reversed(self.changes))[:limit]
