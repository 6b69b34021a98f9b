"""The ``factory`` command (DESIGN §10).

Exit codes: 0 done · 1 failed or a service is unusable · 2 bad input · 3 waiting on a human.
Heavy modules are imported inside commands, so a command that calls no model starts quickly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from factory.cli_common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    check_text_input,
    echo,
    err,
    load_settings,
    print_json,
    read_stdin,
    report,
    run_async,
    show_progress,
)
from factory.cli_groupchat import groupchat_app
from factory.cli_hitl import hitl_app, worker
from factory.cli_routing import routing_app
from factory.cli_secrets import secrets_app
from factory.cli_tokens import tokens_app
from factory.cli_usage import usage
from factory.cli_users import users_app
from factory.cli_webhooks import webhooks_app
from factory.errors import InputError

if TYPE_CHECKING:
    from teams.pipeline import RunOutcome

app = typer.Typer(no_args_is_help=True, add_completion=False, help="AI Software Factory operator CLI.")
teams_app = typer.Typer(no_args_is_help=True, help="The team roster.")
audit_app = typer.Typer(no_args_is_help=True, help="The immutable audit.")
broker_app = typer.Typer(no_args_is_help=True, help="The clarification broker.")
app.add_typer(teams_app, name="teams")
app.add_typer(audit_app, name="audit")
app.add_typer(hitl_app, name="hitl")
app.command()(worker)
app.add_typer(broker_app, name="broker")
app.add_typer(routing_app, name="routing", help="Which models serve each alias: show, change, test.")
app.add_typer(secrets_app, name="secrets", help="Encrypted secrets (API keys) that routing names by reference.")
app.add_typer(users_app, name="users", help="Operator accounts for the chat's login.")
app.add_typer(tokens_app, name="tokens", help="API tokens for the REST API and the MCP server.")
app.add_typer(groupchat_app, name="groupchat")
app.add_typer(webhooks_app, name="webhooks", help="Signed notifications of escalations and runs.")
app.command("usage")(usage)


@teams_app.command("list")
def teams_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the teams on the roster, in pipeline order, with the checks run over their files and the
    sandbox their code runs in (as FACTORY_VERIFY, FACTORY_SANDBOX_EXECUTE and FACTORY_SANDBOX_POLICY
    set them here)."""
    from factory.verification import sandbox_policies
    from teams.roster import roster

    settings = load_settings()
    teams = roster()
    try:
        policies = sandbox_policies(settings)
    except InputError as exc:
        err(str(exc), EXIT_INPUT)
    if as_json:
        print_json([{**t.summary(), "sandbox": policies[t.slug].summary(), "verify": settings.verify}
                    for t in teams.values()])  # fmt: skip
        return
    for t in teams.values():
        echo(f"{t.slug:24} {t.alias:18} {', '.join(d.name for d in t.produces)}")
        checks = (", ".join(t.checks) or "none") if settings.verify else "off (FACTORY_VERIFY)"
        echo(f"{'':24} checks: {checks}; sandbox: {sandbox_line(policies[t.slug])}")


def sandbox_line(policy: Any) -> str:
    """A sandbox policy in a few words, as `factory teams list` shows it."""
    if not policy.execute:
        return "never runs code"
    network = "network" if policy.network else "no network"
    return (
        f"runs code: {policy.cpu_s} s CPU, {policy.memory_mb} MiB, {policy.max_procs} processes,"
        f" {policy.output_kib} KiB output, {policy.wall_s:g} s wall, {network}, read-only but its folder"
    )


def bundle_root(settings: Any, out: Path | None) -> None:
    """Refuse (exit 2) a bundle directory that cannot hold the run's files, before any service starts
    or any model is called."""
    from teams.places import check_bundle_root

    try:
        if out is None:
            check_bundle_root(settings.runs_dir, fix="set FACTORY_DATA_DIR to a writable directory, or give --out")
        else:
            check_bundle_root(out)
    except InputError as exc:
        err(str(exc), EXIT_INPUT)


@app.command()
def run(
    requirement: Annotated[str, typer.Argument(help="What to build, in plain words ('-' reads stdin).")],
    pipeline: Annotated[str, typer.Option(help="phase1, full, or comma-separated team slugs.")] = "phase1",
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Where to write the artifact bundle.")] = None,
    non_interactive: Annotated[
        bool, typer.Option("--non-interactive", help="Never prompt; exit 3 when a human is needed.")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Queue the run for the workers and return at once with its id.")
    ] = False,
) -> None:
    """Run a requirement through a pipeline of teams (here, or with --detach on any `factory worker`)."""
    from teams.pipeline import validate_requirement
    from teams.roster import resolve_pipeline

    settings = load_settings()
    if requirement == "-":
        requirement = read_stdin("requirement", settings.max_requirement_bytes)
    try:
        validate_requirement(requirement, settings.max_requirement_bytes)
        _name, slugs = resolve_pipeline(pipeline)
    except InputError as exc:
        err(str(exc), EXIT_INPUT)
    bundle_root(settings, out)

    if detach:
        run_async(_submit(settings, requirement, pipeline, out, as_json))
        return

    async def go() -> RunOutcome:
        from factory.wiring import open_factory, responders_for_run

        async with open_factory(settings, serve=responders_for_run(settings)) as factory:
            show_progress(factory, len(slugs), as_json)
            return await factory.engine.start(requirement, pipeline, out)

    outcome: RunOutcome = run_async(go())
    report(outcome, as_json)


async def _submit(settings: Any, requirement: str, pipeline: str, out: Path | None, as_json: bool) -> None:
    """``run --detach``: the run goes to the run queue (PostgreSQL) and the workers are woken."""
    from factory.wiring import open_factory

    async with open_factory(settings) as factory:
        await announce_queued(factory, settings, await factory.engine.submit(requirement, pipeline, out), as_json)


async def announce_queued(factory: Any, settings: Any, run: Any, as_json: bool) -> None:
    """A run just submitted to the run queue: wake the workers, and tell the operator who will drive it
    (``run --detach``, ``groupchat run --detach``)."""
    from factory.worker import wake_workers, workers_alive

    await wake_workers(factory.redis, settings.redis_prefix, run.id)
    alive = await workers_alive(factory.redis, settings.redis_prefix)
    if as_json:
        echo(json.dumps({"run_id": run.id, "status": run.status.value, "workers_alive": len(alive)}))
        return
    echo(f"queued run {run.id} ({len(run.pipeline)} stages)")
    if alive:
        echo(f"{len(alive)} worker(s) alive will drive it; follow it with `factory audit show {run.id}`"
             " or `factory hitl list` when it needs you")  # fmt: skip
    else:
        echo("no worker is running: start one with `factory worker` (or `factory up`); the run waits for it", err=True)


@app.command()
def resume(
    run_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Continue a run from its last committed stage (after a crash, or once escalations are decided)."""

    async def go() -> RunOutcome:
        from factory.wiring import open_factory, responders_for_run

        async with open_factory(settings, serve=responders_for_run(settings)) as factory:
            run = await factory.store.get_run(run_id)
            if run is None:
                raise InputError(f"no run {run_id!r}; start one with `factory run`")
            show_progress(factory, len(run.pipeline), as_json)
            return await factory.engine.drive(run_id)

    settings = load_settings()
    report(run_async(go()), as_json)


@app.command()
def revise(
    run_id: str,
    from_team: Annotated[str, typer.Option("--from", help="The first team to run again.")],
    feedback: Annotated[
        str, typer.Option(help="What to change; anchored in every objective from that team on ('-' reads stdin).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the revision run's summary as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Where to write the revision's bundle.")] = None,
) -> None:
    """Re-run a run from one team with feedback, as a new run linked to it; the old run stays intact."""
    settings = load_settings()
    if feedback == "-":
        feedback = read_stdin("feedback", settings.max_requirement_bytes)
    bundle_root(settings, out)

    async def go() -> RunOutcome:
        from factory.wiring import open_factory, responders_for_run
        from teams.revision import revise as revise_run

        async with open_factory(settings, serve=responders_for_run(settings)) as factory:
            run = await factory.store.get_run(run_id)
            show_progress(factory, len(run.pipeline) if run else 0, as_json)
            return await revise_run(
                factory.engine, factory.store, factory.audit, run_id, from_team, feedback, out_dir=out,
                max_feedback_bytes=settings.max_requirement_bytes,
            )  # fmt: skip

    report(run_async(go()), as_json)


@app.command()
def cancel(
    run_id: str,
    reason: Annotated[str | None, typer.Option(help="Why the run stops; kept in its audit ('-' reads stdin).")] = None,
    by: Annotated[
        str | None, typer.Option("--by", help="Who cancels (default: FACTORY_OPERATOR, else your user).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the cancelled run as JSON.")] = False,
) -> None:
    """Stop a run for good, even while another process drives it; its waiting escalations are closed."""
    from factory.cli_common import who_decides, with_factory
    from factory.errors import DecisionRefused
    from hitl.desk import MAX_TEXT_BYTES, checked_text

    settings = load_settings()
    who = who_decides(settings, by)  # refused here, before any service starts
    if reason == "-":
        reason = read_stdin("reason", MAX_TEXT_BYTES)
    try:
        why = checked_text(reason, "reason", required=False)
    except DecisionRefused as exc:
        err(str(exc), exc.exit_code)
    run = with_factory(lambda f: f.engine.cancel(run_id, by=who, reason=why), settings)
    if as_json:
        print_json({"run_id": run.id, "status": run.status.value, "by": who, "reason": why})
        return
    echo(f"run {run.id}: cancelled by {who}" + (f": {why}" if why else ""))


@app.command()
def responders(
    teams: Annotated[
        list[str] | None, typer.Option("--team", help="A team to answer for (repeatable); default: all 17.")
    ] = None,
) -> None:
    """Answer clarification requests until stopped (SIGINT/SIGTERM); run any number, anywhere."""
    import signal

    from broker.responders import consumer_name
    from teams.roster import resolve_pipeline

    try:
        slugs = resolve_pipeline(",".join(teams))[1] if teams else resolve_pipeline("full")[1]
    except InputError as exc:
        err(str(exc), EXIT_INPUT)
    settings = load_settings()

    async def go() -> None:
        import asyncio

        from factory.wiring import open_factory

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with open_factory(settings, serve=slugs):
            echo(f"answering clarifications for {len(slugs)} teams as {consumer_name()}", err=True)
            await stop.wait()
        echo("responders stopped", err=True)

    run_async(go())


@audit_app.command("verify")
def audit_verify(run_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check a run's (or a group chat's) audit chain: exit 0 intact, 1 tampered."""
    from memory.base import AuditReport

    async def go() -> AuditReport:
        from factory.operations import Operations
        from factory.wiring import open_factory

        async with open_factory(settings) as factory:  # the chain, its head, the bundle's manifest anchor
            return await Operations(factory).audit_verify(run_id)

    settings = load_settings()
    report: AuditReport = run_async(go())
    if as_json:
        print_json(report.model_dump())
    else:
        state = "intact" if report.intact else "TAMPERED"
        echo(f"{run_id}: {state}, {report.entries} entries, head {report.head_sha256}")
        for problem in report.problems:
            echo(f"  - {problem}")
    raise typer.Exit(EXIT_OK if report.intact else EXIT_FAILED)


@audit_app.command("show")
def audit_show(run_id: str) -> None:
    """Print a run's (or a group chat's) audit entries as JSON lines."""

    async def go() -> list[Any]:
        from factory.operations import Operations
        from factory.wiring import open_factory

        async with open_factory(settings) as factory:
            return await Operations(factory).audit_entries(run_id)

    settings = load_settings()
    for entry in run_async(go()):
        echo(json.dumps({**entry.model_dump(mode="json"), "payload": json.loads(entry.payload)}))


@app.command("ask")
def ask(
    question: str,
    run: Annotated[str | None, typer.Option("--run", help="only this run's memory")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Answer a question about a run or the whole factory from memory, citing the items used."""
    from factory.operations import check_question

    try:
        check_question(question)  # refused here, before any service starts
    except InputError as exc:
        err(str(exc), EXIT_INPUT)

    async def go() -> Any:
        from factory.operations import Operations
        from factory.wiring import open_factory

        async with open_factory(settings) as factory:
            return await Operations(factory).ask(question, run_id=run)

    settings = load_settings()
    answer = run_async(go())
    if as_json:
        print_json(answer.model_dump(mode="json"))
        return
    echo(answer.text, lines=True)
    for c in answer.citations:
        echo(f"  [{c.number}] {c.source} (run {c.run_id or '-'}): {' '.join(c.excerpt.split())[:160]}")


@audit_app.command("search")
def audit_search(
    query: str,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search the audit of every past run (all words must match), best first."""
    from factory.operations import check_query

    try:
        check_query(query)  # refused here, before any service starts
    except InputError as exc:
        err(str(exc), EXIT_INPUT)

    async def go() -> list[Any]:
        from factory.operations import Operations
        from factory.wiring import open_factory

        async with open_factory(settings) as factory:
            return await Operations(factory).audit_search(query, limit=limit)

    settings = load_settings()
    hits = run_async(go())
    if as_json:
        print_json([h.model_dump(mode="json") for h in hits])
        return
    if not hits:
        echo(f"nothing in the audit matches {query!r}")
    for hit in hits:
        excerpt = " ".join(hit.excerpt.split())
        echo(f"{hit.run_id}  #{hit.seq:<3} {hit.kind:18} {hit.created_at:%Y-%m-%d %H:%M}  {excerpt}")


BROKER_COUNTERS = ("requests", "replies", "timeouts", "reclaims", "duplicates", "resent", "malformed")


@broker_app.command("stats")
def broker_stats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Clarification counters, and each team's requests not answered yet (with a responder, or waiting)."""
    from broker.base import Refusal

    async def go() -> dict[str, Any]:
        from broker.redis_streams import RedisBroker
        from factory import services
        from factory.service_errors import safe_url, service_error
        from factory.wiring import broker_limits, open_redis
        from teams.slugs import ALL_TEAMS

        configured = settings.redis_url.get_secret_value() if settings.redis_url else None
        url = configured or services.start_redis(settings.data_dir, timeout_s=settings.service_start_timeout_s)
        redis = await open_redis(url, settings.connect_timeout_s)
        try:
            broker = RedisBroker(redis, prefix=settings.redis_prefix, limits=broker_limits(settings))
            counters, backlog = await broker.counters(), await broker.backlog(ALL_TEAMS)
        except Exception as exc:
            embedded = frozenset() if configured else frozenset({"Redis"})
            if (wrapped := service_error(exc, redis_url=url, embedded=embedded)) is None:
                raise
            raise wrapped from exc
        finally:
            await redis.aclose()
        return {
            "redis": safe_url(url),
            "prefix": settings.redis_prefix,
            "counters": {**dict.fromkeys(BROKER_COUNTERS, 0), **counters},
            "refusals": {
                r.value: counters.get("timeouts" if r is Refusal.TIMEOUT else f"refused.{r.value}", 0) for r in Refusal
            },
            "teams": backlog,
        }

    settings = load_settings()
    stats: dict[str, Any] = run_async(go())
    if as_json:
        print_json(stats)
        return
    echo(f"broker at {stats['redis']} (prefix {stats['prefix']})")
    echo("  ".join(f"{name} {stats['counters'][name]}" for name in BROKER_COUNTERS))
    echo("refused: " + "  ".join(f"{reason} {n}" for reason, n in stats["refusals"].items()))
    echo(f"{'team':24} {'unanswered':>10} {'pending':>8} {'waiting':>8}")
    for team, row in stats["teams"].items():
        echo(f"{team:24} {row['stream']:>10} {row['pending']:>8} {row['waiting']:>8}")


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check services, models and limits; exit 1 if the factory cannot work."""
    from factory.doctor import diagnose

    settings = load_settings()
    report = run_async(diagnose(settings))
    if as_json:
        print_json(report)
    else:
        for check in report["checks"]:
            echo(f"{'ok ' if check['ok'] else 'BAD'} {check['name']:10} {check['detail']}")
        echo(f"limits: {json.dumps(report['limits'])}")
    raise typer.Exit(EXIT_OK if report["usable"] else EXIT_FAILED)


@app.command()
def up(
    host: Annotated[
        str, typer.Option(help="Address the chat listens on (login required unless loopback).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the chat.")] = 8000,
    services_only: Annotated[
        bool, typer.Option("--services-only", help="Start the services, migrate, report, and exit.")
    ] = False,
    worker: Annotated[bool, typer.Option(help="Start a `factory worker` beside the chat.")] = True,
) -> None:
    """Start what is missing (embedded services, a worker) and serve the chat until Ctrl-C."""

    async def services() -> Any:
        from factory.wiring import open_factory

        async with open_factory(settings) as factory:
            return factory.endpoints, factory.model_description

    settings = load_settings()
    endpoints, model = run_async(services())
    db = "embedded" if endpoints.embedded_database else "configured"
    rd = "embedded" if endpoints.embedded_redis else "configured"
    echo(f"postgres: {db} · redis: {rd} · models: {model} · data: {settings.data_dir}")
    if services_only:
        echo('ready: `factory run "REQUIREMENT"` runs a pipeline; `factory down` stops the services')
        return
    from factory.chat_up import serve_chat

    raise typer.Exit(serve_chat(settings, host=host, port=port, worker=worker))


@app.command("api")
def api_command(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default FACTORY_API_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default FACTORY_API_PORT, 8100; 0: any free one).")
    ] = None,
) -> None:
    """Serve the REST API under /api/v1 (OpenAPI at /api/v1/openapi.json) until Ctrl-C; every request
    needs a token from `factory tokens create`."""
    settings = load_settings()

    def ready(url: str) -> None:
        echo(f"api: {url}/api/v1 · OpenAPI {url}/api/v1/openapi.json · mcp: {url}/mcp")
        echo("every request needs `Authorization: Bearer <token>`:"
             " factory tokens create NAME --scope viewer|operator|admin")  # fmt: skip

    async def go() -> None:
        from api.serve import serve

        await serve(settings, host=host or settings.api_host, port=settings.api_port if port is None else port,
                    on_ready=ready)  # fmt: skip

    from api.serve import fast_loop

    run_async(go(), loop_factory=fast_loop())


@app.command("mcp")
def mcp_command() -> None:
    """Serve the MCP server on stdio for an AI assistant (Claude Desktop, Goose, ...) that starts this
    command; it acts with the API token in FACTORY_TOKEN. Standard output carries only the protocol."""
    from api.mcp.stdio import serve_stdio, token_from_env
    from factory.errors import TokenNotFound

    settings = load_settings()
    try:
        raw = token_from_env(os.environ)
    except TokenNotFound as exc:
        err(str(exc), EXIT_INPUT)
    run_async(serve_stdio(settings, raw))


@app.command()
def down() -> None:
    """Stop the embedded services this data dir started."""
    from factory import services

    settings = load_settings()
    stopped = services.stop(settings.data_dir)
    echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def main() -> None:
    try:
        check_text_input(sys.argv, os.environ)
    except typer.Exit as exc:  # raised outside click, which would otherwise turn it into the exit code
        sys.exit(exc.exit_code)
    app()
