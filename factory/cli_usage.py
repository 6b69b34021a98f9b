"""``factory usage [--run ID] [--last N] [--by team|alias|model] [--json]`` (DESIGN §10, issue 14).

What the model calls cost, from the usage ledger: calls, failed calls, tokens, cost, fallbacks and the
median latency per team, alias or model, then the total. The figures come from ``teams.usage_report``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from factory.cli_common import echo, err, print_json, with_factory

if TYPE_CHECKING:
    from factory.wiring import Factory
    from teams.usage_report import UsageReport

SHOWN_RUNS = 10  # run ids listed under the table; the JSON has all of them
# teams.usage_report's DEFAULT_LAST and MAX_LAST, repeated so that `factory --help` does not import
# pydantic and psycopg (a unit test keeps them equal).
DEFAULT_LAST, MAX_LAST = 10, 10_000


def usage(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's calls.")] = None,
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            help=f"The calls of the N most recently created runs (1 to {MAX_LAST}). With neither --run nor"
            f" --last: the last {DEFAULT_LAST} runs, plus the calls made outside any run (factory ask, a team"
            " chat) since the earliest of them was created.",
        ),
    ] = None,
    by: Annotated[str, typer.Option("--by", help="Group by team, alias or model.")] = "team",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Tokens, cost (USD, 0 for local models), calls, failed calls, fallbacks and median latency of the
    model calls, per team, alias or model, with a total. "fell back": calls on which at least one
    deployment failed; "hops": the failed deployments in all."""
    from factory.errors import InputError
    from teams.usage_report import usage_report, usage_scope

    try:
        scope, grouping = usage_scope(run, last, by)  # refused here, before any service starts
    except InputError as exc:
        err(str(exc), exc.exit_code)

    async def go(factory: Factory) -> UsageReport:
        return await usage_report(factory.pool, scope, grouping)

    report: UsageReport = with_factory(go)
    if as_json:
        print_json(report.model_dump(mode="json"))
        return
    echo(report.describe())
    for line in report.table():
        echo(line)
    if report.checks:
        from factory.cli_common import checks_line

        c = report.checks
        figures = checks_line(c).removeprefix("checks: ")
        echo(f"verification of {c['stages_checked']} checked stages: {figures};"
             f" {c['artifacts_checked']} of their {c['artifacts_total']} files checked")  # fmt: skip
    if report.scope.run is None and report.runs:
        more = len(report.runs) - SHOWN_RUNS
        echo("runs, newest first: " + ", ".join(report.runs[:SHOWN_RUNS]) + (f" and {more} more" if more > 0 else ""))
