"""What the usage ledger says was spent: calls, failures, tokens, cost, fallbacks and latency per group.

``factory usage`` (and later the chat) reads this; the sums and the median are computed in PostgreSQL,
so a report over many runs moves a few rows, not the ledger.

Which calls a report covers (``UsageScope``), predictable on purpose:

- ``run``: the calls of that one run (an unknown run is ``RunNotFound``, exit 2);
- ``last=N``: the calls of the N most recently created runs;
- neither: the calls of the last ``DEFAULT_LAST`` runs **and** the calls made outside any run (``factory
  ask``, a team chat) since the earliest of those runs was created (all of them when there is no run).

Per group: ``fallback_calls`` counts the calls on which at least one deployment failed (the call moved
on, or failed in the end), ``fallback_hops`` the failed deployments in all; ``latency_p50_ms`` is the
median over every call, failed ones included (a failure costs its caller time too).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from psycopg import sql
from pydantic import BaseModel, Field

from factory.errors import InputError, RunNotFound
from teams.records import checks_total

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

UsageBy = Literal["team", "alias", "model"]
USAGE_BY: tuple[UsageBy, ...] = get_args(UsageBy)
DEFAULT_LAST = 10
MAX_LAST = 10_000  # a bound on the runs one report reads
MAX_RUN_ID = 200  # run ids are short; a longer one is a mistake, not a run
NONE_LABEL = "(none)"  # a group with no team (a call outside any team) or no model (no deployment answered)

# The group key per dimension: fixed SQL, never user text. A failed call answered by no model has model ''.
_KEYS: dict[UsageBy, sql.Composable] = {
    "team": sql.SQL("team"),
    "alias": sql.SQL("alias"),
    "model": sql.SQL("NULLIF(model, '')"),
}


class UsageScope(BaseModel):
    """Which calls a report covers (see the module docstring); made by ``usage_scope``."""

    run: str | None = None
    last: int = Field(default=DEFAULT_LAST, ge=1, le=MAX_LAST)
    #: True only when neither ``run`` nor ``last`` was given: calls outside any run are counted too.
    with_runless: bool = False


def usage_scope(run: str | None = None, last: int | None = None, by: str = "team") -> tuple[UsageScope, UsageBy]:
    """The scope and grouping a command asked for, checked before any service is reached; ``InputError``
    (exit 2) says what to give instead."""
    if by not in USAGE_BY:
        raise InputError(f"--by must be one of {', '.join(USAGE_BY)} (got {by!r})")
    if run is not None and last is not None:
        raise InputError("give --run ID or --last N, not both")
    if last is not None and not 1 <= last <= MAX_LAST:
        raise InputError(f"--last must be a number of runs from 1 to {MAX_LAST} (got {last}); e.g. --last 10")
    if run is not None and not (run.strip() and len(run) <= MAX_RUN_ID):
        raise InputError(f"--run needs a run id of 1 to {MAX_RUN_ID} characters; see `factory usage` for recent ones")
    grouping: UsageBy = by  # narrowed by the check against USAGE_BY above
    if run is not None:
        return UsageScope(run=run), grouping
    if last is not None:
        return UsageScope(last=last), grouping
    return UsageScope(with_runless=True), grouping


class UsageTotals(BaseModel):
    """What a set of ledger rows adds up to. ``cost_usd`` is never None: a local model's call costs 0."""

    calls: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    fallback_calls: int = 0
    fallback_hops: int = 0
    latency_p50_ms: float | None = None  # None only when there is no call


class UsageGroup(UsageTotals):
    """One line of the report: the calls of one team, alias or model (``group`` None: none of them)."""

    group: str | None


class UsageReport(BaseModel):
    """The report ``factory usage`` prints: groups, most expensive first, and their total."""

    by: UsageBy
    scope: UsageScope
    runs: list[str]  # the runs covered, newest first
    #: Calls outside any run counted from here on (None: all of them, or none when ``scope.with_runless`` is
    #: False).
    runless_since: datetime | None = None
    groups: list[UsageGroup]
    total: UsageTotals
    #: The verification gate's figures of the runs covered, added up (None: none was checked).
    checks: dict[str, Any] | None = None

    def describe(self) -> str:
        """One line saying which calls the figures cover."""
        s = self.scope
        if s.run is not None:
            return f"usage of run {s.run}, by {self.by}"
        runs = f"the last {s.last} runs ({len(self.runs)} found)"
        if not s.with_runless:
            return f"usage of {runs}, by {self.by}"
        since = f" since {self.runless_since:%Y-%m-%d %H:%M:%S %Z}" if self.runless_since else ""
        return f"usage of {runs} and of calls outside any run{since}, by {self.by}"

    def table(self) -> list[str]:
        """The groups and the total as aligned text lines: the label left, the figures right."""
        header = [self.by, "calls", "failed", "tokens in", "tokens out", "cost usd", "fell back", "hops", "p50 ms"]
        rows = [[_label(g.group), *_figures(g)] for g in self.groups] + [["total", *_figures(self.total)]]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            first, *rest = cells
            return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

        return [line(header), *(line(r) for r in rows)]


def _label(group: str | None) -> str:
    return NONE_LABEL if group is None else group


def _figures(t: UsageTotals) -> list[str]:
    p50 = "-" if t.latency_p50_ms is None else f"{t.latency_p50_ms:.1f}"
    return [
        str(t.calls),
        str(t.failed),
        str(t.tokens_in),
        str(t.tokens_out),
        f"{t.cost_usd:.4f}",
        str(t.fallback_calls),
        str(t.fallback_hops),
        p50,
    ]


_AGGREGATE = sql.SQL(
    """
    SELECT GROUPING(k) = 1, k, count(*), count(*) FILTER (WHERE NOT ok),
           coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0), coalesce(sum(cost_usd), 0),
           count(*) FILTER (WHERE jsonb_array_length(fallbacks) > 0),
           coalesce(sum(jsonb_array_length(fallbacks)), 0),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
    FROM (SELECT {key} AS k, * FROM usage_ledger
          WHERE run_id = ANY(%(runs)s)
             OR (%(runless)s AND run_id IS NULL AND created_at >= coalesce(%(since)s, '-infinity'::timestamptz))) u
    GROUP BY GROUPING SETS ((k), ())
    ORDER BY GROUPING(k), 7 DESC, 3 DESC, k NULLS LAST
    """
)


async def usage_report(pool: AsyncConnectionPool, scope: UsageScope, by: UsageBy) -> UsageReport:
    """The report of the calls ``scope`` covers, grouped ``by`` team, alias or model. Raises
    ``RunNotFound`` (exit 2) for a ``scope.run`` the factory never started."""
    async with pool.connection() as conn:
        if scope.run is not None:
            cur = await conn.execute("SELECT id, created_at FROM runs WHERE id = %s", (scope.run,))
            if await cur.fetchone() is None:
                raise RunNotFound(f"no run {scope.run!r}; see the latest runs' ids with `factory usage`")
            runs, since = [scope.run], None
        else:
            cur = await conn.execute(
                "SELECT id, created_at FROM runs ORDER BY created_at DESC, id DESC LIMIT %s", (scope.last,)
            )
            found = await cur.fetchall()
            runs, since = [r[0] for r in found], (found[-1][1] if found else None)
        params = {"runs": runs, "runless": scope.with_runless, "since": since}
        cur = await conn.execute(_AGGREGATE.format(key=_KEYS[by]), params)
        rows = await cur.fetchall()
        cur = await conn.execute("SELECT checks FROM stages WHERE run_id = ANY(%s) AND checks IS NOT NULL", (runs,))
        checked = [r[0] for r in await cur.fetchall()]
    groups = [UsageGroup(group=row[1], **_totals(row)) for row in rows if not row[0]]
    [total] = [UsageTotals(**_totals(row)) for row in rows if row[0]]
    return UsageReport(
        by=by,
        scope=scope,
        runs=runs,
        runless_since=since if scope.with_runless else None,
        groups=groups,
        total=total,
        checks=checks_total(checked),
    )


def _totals(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "calls": int(row[2]),
        "failed": int(row[3]),
        "tokens_in": int(row[4]),
        "tokens_out": int(row[5]),
        "cost_usd": round(float(row[6]), 10),  # a sum of floats: no 0.30000000000000004 in the output
        "fallback_calls": int(row[7]),
        "fallback_hops": int(row[8]),
        "latency_p50_ms": None if row[9] is None else float(row[9]),
    }
