"""The run policy an operator governs from the chat: gate limits, budgets, clarification limits.

Each value starts as the process's setting (``FACTORY_CONFIDENCE_FLOOR`` …) and can be changed in
the chat's settings panel; changes are kept in PostgreSQL, append-only (who, when, what), and a new
run records the policy it starts with and keeps it (``Run.policy``), like its routing. The rules are
the settings' own: ``RunPolicy``'s fields are copied from ``Settings``, so a value the environment
would refuse is refused here with the same bounds.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from factory.errors import InputError
from factory.settings import Settings
from routing.budget import BudgetLimits

FIELDS = (
    "confidence_floor",
    "retry_budget",
    "iteration_cap",
    "check_revisions",
    "budget_run_tokens",
    "budget_run_usd",
    "budget_team_tokens",
    "budget_team_usd",
    "clarify_max_per_objective",
    "clarify_max_depth",
    "clarify_reply_timeout_s",
)
LABELS = {
    "confidence_floor": "Confidence floor (COMPLETE below it asks you to approve; above 1: every stage)",
    "retry_budget": "Retries of unusable output per stage",
    "iteration_cap": "Executions per stage before it escalates",
    "check_revisions": "Revisions after failed checks before you are asked",
    "budget_run_tokens": "Run budget, tokens (empty: none)",
    "budget_run_usd": "Run budget, USD (empty: none)",
    "budget_team_tokens": "Team budget per run, tokens (empty: none)",
    "budget_team_usd": "Team budget per run, USD (empty: none)",
    "clarify_max_per_objective": "Clarifications per objective",
    "clarify_max_depth": "Clarification hops",
    "clarify_reply_timeout_s": "Seconds a team waits for a clarification",
}

RunPolicy: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "RunPolicy",
    __config__=ConfigDict(extra="forbid"),
    **{name: (Settings.model_fields[name].annotation, copy.copy(Settings.model_fields[name])) for name in FIELDS},
)

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0431_policy_changes",
        """
        CREATE TABLE IF NOT EXISTS policy_changes (
            version bigserial PRIMARY KEY,
            changes jsonb NOT NULL,
            changed_by text NOT NULL,
            changed_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE OR REPLACE FUNCTION policy_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'policy_changes is append-only: record a new change instead';
        END $$;
        DROP TRIGGER IF EXISTS policy_changes_append_only ON policy_changes;
        CREATE TRIGGER policy_changes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON policy_changes
            FOR EACH STATEMENT EXECUTE FUNCTION policy_changes_append_only();
        """,
    )
]


def problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}" for e in exc.errors())


class PolicyService:
    """The effective run policy (settings, then the stored changes in order) and its changes."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool) -> None:
        self._settings = settings
        self._pool = pool

    def defaults(self) -> dict[str, Any]:
        return {name: getattr(self._settings, name) for name in FIELDS}

    async def current(self) -> dict[str, Any]:
        values = self.defaults()
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT changes FROM policy_changes ORDER BY version")
            for (changes,) in await cur.fetchall():
                values.update({k: v for k, v in changes.items() if k in FIELDS})
        return dict(RunPolicy.model_validate(values).model_dump())

    async def set(self, changes: dict[str, Any], *, by: str) -> tuple[int, dict[str, Any]]:
        """Validate ``changes`` over the current policy and store them; (version, the new policy)."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise InputError(f"unknown policy setting {', '.join(unknown)}; the settings are {', '.join(FIELDS)}")
        merged = {**await self.current(), **changes}
        try:
            policy = dict(RunPolicy.model_validate(merged).model_dump())
        except ValidationError as exc:
            raise InputError(f"not changed: {problems(exc)}") from exc
        kept = {k: policy[k] for k in changes}
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO policy_changes (changes, changed_by) VALUES (%s, %s) RETURNING version",
                (Jsonb(kept), by),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), policy

    async def set_each(self, changes: dict[str, Any], *, by: str) -> tuple[int | None, dict[str, Any], dict[str, str]]:
        """Store each of ``changes`` that is valid on its own; (version or None, the policy now, and
        the refused ones with why). One bad value loses none of the others."""
        current, kept, refused = await self.current(), {}, {}
        for key, value in changes.items():
            if key not in FIELDS:
                refused[key] = f"unknown setting; the settings are {', '.join(FIELDS)}"
                continue
            try:
                kept[key] = RunPolicy.model_validate({**current, key: value}).model_dump()[key]
            except ValidationError as exc:
                refused[key] = "; ".join(e["msg"] for e in exc.errors())
        if not kept:
            return None, current, refused
        version, policy = await self.set(kept, by=by)
        return version, policy, refused

    async def history(self, limit: int = 20) -> list[tuple[int, dict[str, Any], str, datetime]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT version, changes, changed_by, changed_at FROM policy_changes ORDER BY version DESC LIMIT %s",
                (limit,),
            )
            return [(int(v), dict(c), str(b), at) for v, c, b, at in await cur.fetchall()]


def budget_limits(policy: dict[str, Any] | None, settings: Settings) -> BudgetLimits:
    """The budgets of a run: its recorded policy's, else the settings'."""
    values = {name: getattr(settings, name) for name in FIELDS} | (policy or {})
    return BudgetLimits(
        run_tokens=values["budget_run_tokens"],
        run_cost_usd=values["budget_run_usd"],
        team_tokens=values["budget_team_tokens"],
        team_cost_usd=values["budget_team_usd"],
    )
