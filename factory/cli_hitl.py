"""``factory hitl ...`` (the decision queue) and ``factory worker`` (DESIGN §9, §10).

A decision is recorded at once; the run it unblocks continues in a ``factory worker``, with
``factory resume RUN_ID``, or right here with ``--resume``. Texts may be ``-`` to read stdin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from factory.cli_common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    echo,
    err,
    load_settings,
    print_json,
    read_stdin,
    report,
    run_async,
    show_progress,
    who_decides,
    with_factory,
)

if TYPE_CHECKING:
    from factory.settings import Settings
    from factory.wiring import Factory
    from hitl.attention import Attention
    from hitl.base import Escalation

hitl_app = typer.Typer(no_args_is_help=True, help="The decision queue: escalations waiting on a human.")

By = Annotated[str | None, typer.Option("--by", help="Who decides (default: FACTORY_OPERATOR, else your user).")]
Resume = Annotated[
    bool | None,
    typer.Option(
        "--resume/--no-resume",
        help="Continue the run here once nothing else blocks it (default: when no `factory worker` runs).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _text(value: str, what: str) -> str:
    """The text of a decision (``-``: standard input), checked as the desk checks it, before any
    service is started."""
    from factory.errors import DecisionRefused
    from hitl.desk import MAX_TEXT_BYTES, checked_text

    if value == "-":
        value = read_stdin(what, MAX_TEXT_BYTES)
    try:
        return checked_text(value, what, required=True) or ""
    except DecisionRefused as exc:
        err(str(exc), exc.exit_code)


def _due(e: Escalation, now: datetime) -> str:
    left = e.sla_deadline - now
    hours = abs(left.total_seconds()) / 3600
    span = f"{hours * 60:.0f}m" if hours < 1 else f"{hours:.1f}h"
    return f"due in {span}" if left.total_seconds() >= 0 else f"LATE by {span}"


@hitl_app.command("list")
def hitl_list(as_json: AsJson = False) -> None:
    """What needs your attention: a summary, then open escalations, most urgent first."""
    summary = _attention()
    if as_json:
        print_json([w.escalation.model_dump(mode="json") | {"sla_level": int(w.sla_level)} for w in summary.items])
        return
    echo(summary.headline())
    now = datetime.now(UTC)
    for w in summary.items:
        e = w.escalation
        deferred = " (deferred)" if e.status.value == "deferred" else ""
        echo(f"{e.id}  {e.priority.value:8} {e.kind.value:13} {_due(e, now):16} {e.team}: {e.question}{deferred}")
    if summary.items:
        echo("decide: factory hitl show ID · answer ID TEXT · approve ID · reject ID --reason TEXT · defer ID")


@hitl_app.command("summary")
def hitl_summary(as_json: AsJson = False) -> None:
    """Counts by priority, SLA breaches, the oldest waits and the blocked runs."""
    summary = _attention()
    if as_json:
        print_json(summary.model_dump(mode="json", exclude={"items"}))
        return
    echo(summary.headline())
    for w in summary.oldest:
        echo(f"  oldest: {w.escalation.id} waiting {w.waited_s / 3600:.1f}h ({w.escalation.team})")
    for r in summary.blocked_runs:
        echo(f"  blocked: {r.run_id} on {r.escalations} escalation(s), {r.oldest_waiting_s / 3600:.1f}h")


@hitl_app.command("show")
def hitl_show(escalation_id: str, as_json: AsJson = False) -> None:
    """Everything needed to decide one escalation: question, reasoning, blockers, excerpts, choices."""
    from factory.errors import EscalationNotFound

    async def go(factory: Factory) -> Any:
        found = await factory.escalations.get(escalation_id)
        if found is None:
            raise EscalationNotFound(f"no escalation {escalation_id!r}; see `factory hitl list`")
        return found

    e = with_factory(go)
    if as_json:
        print_json(e.model_dump(mode="json"))
        return
    c = e.context
    echo(f"{e.id} [{e.kind.value}/{e.priority.value}] {e.status.value} · run {e.run_id} stage {e.stage_index} {e.team}")
    echo(f"question: {e.question}")
    for label, key in (("why", "reason"), ("reasoning", "reasoning")):
        if c.get(key):
            echo(f"{label}: {c[key]}", lines=True)
    for label, key in (("blockers", "blockers"), ("assumptions", "assumptions"), ("route", "hop_chain")):
        if c.get(key):
            echo(f"{label}: " + "; ".join(map(str, c[key])))
    for name, excerpt in (c.get("artifacts") or {}).items():
        echo(f"--- {name} (excerpt) ---")
        echo(excerpt, lines=True)
    echo(f"choices: {c.get('choices', '')}")
    if e.answer or e.decided_by:
        echo(f"decided: {e.status.value} by {e.decided_by} at {e.decided_at}: {e.answer or ''}")


@hitl_app.command("answer")
def hitl_answer(escalation_id: str, text: str, by: By = None, resume: Resume = None) -> None:
    """Answer a question (or say what unblocks a team); its stage runs again with your answer."""
    answer = _text(text, "answer")
    settings = load_settings()
    who = who_decides(settings, by)  # refused here, before any service starts
    _decide(settings, resume, lambda f: f.desk.answer(escalation_id, answer, by=who))


@hitl_app.command("approve")
def hitl_approve(
    escalation_id: str,
    notes: Annotated[str | None, typer.Option(help="Optional notes, kept with the decision.")] = None,
    by: By = None,
    resume: Resume = None,
) -> None:
    """Approve a stage's artifacts (or more budget); the run continues."""
    settings = load_settings()
    who = who_decides(settings, by)  # refused here, before any service starts
    _decide(settings, resume, lambda f: f.desk.approve(escalation_id, notes=notes, by=who))


@hitl_app.command("reject")
def hitl_reject(
    escalation_id: str,
    reason: Annotated[str, typer.Option(help="Why; the stage runs again with it as feedback (required).")],
    by: By = None,
    resume: Resume = None,
) -> None:
    """Reject with a reason: the stage runs again with it (a budget escalation: the run is cancelled)."""
    why = _text(reason, "reason")
    settings = load_settings()
    who = who_decides(settings, by)  # refused here, before any service starts
    _decide(settings, resume, lambda f: f.desk.reject(escalation_id, reason=why, by=who))


@hitl_app.command("defer")
def hitl_defer(
    escalation_id: str,
    hours: Annotated[float | None, typer.Option(min=0.01, max=24 * 30, help="Decide within this many hours.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Decide by this time (ISO 8601; UTC if no zone).")] = None,
    by: By = None,
) -> None:
    """Put off a decision to a new deadline (default: one more SLA window); the run keeps waiting."""
    if hours is not None and until is not None:
        err("give --hours or --until, not both", EXIT_INPUT)
    if hours is not None and not math.isfinite(hours):
        err("--hours must be a number of hours, e.g. 4", EXIT_INPUT)
    deadline = datetime.now(UTC) + timedelta(hours=hours) if hours is not None else None
    if until is not None:
        deadline = until if until.tzinfo else until.replace(tzinfo=UTC)
    settings = load_settings()
    who = who_decides(settings, by)  # refused here, before any service starts
    _decide(settings, False, lambda f: f.desk.defer(escalation_id, until=deadline, by=who))


@hitl_app.command("batch-approve")
def hitl_batch_approve(
    escalation_ids: Annotated[list[str] | None, typer.Argument(help="Escalations to approve.")] = None,
    all_low_risk: Annotated[bool, typer.Option("--all", help="Every waiting low-risk escalation.")] = False,
    notes: Annotated[str | None, typer.Option(help="Optional notes, kept with each decision.")] = None,
    by: By = None,
    as_json: AsJson = False,
) -> None:
    """Approve several low-risk escalations at once; others are refused with the reason (exit 1)."""
    if not escalation_ids and not all_low_risk:
        err("name the escalations to approve, or --all for every waiting low-risk one", EXIT_INPUT)
    settings = load_settings()
    operator = who_decides(settings, by)

    async def go(factory: Factory) -> Any:
        return await factory.desk.batch_approve(None if all_low_risk else escalation_ids, by=operator, notes=notes)

    outcome = with_factory(go, settings)
    if as_json:
        print_json({"approved": [e.id for e in outcome.approved], "refused": dict(outcome.refused)})
    else:
        for e in outcome.approved:
            echo(f"approved {e.id} ({e.team}, run {e.run_id})")
        for escalation_id, why in outcome.refused:
            echo(f"refused  {escalation_id}: {why}")
        if not outcome.approved and not outcome.refused:
            echo("nothing low-risk is waiting")
    raise typer.Exit(EXIT_FAILED if outcome.refused else EXIT_OK)


def _attention() -> Attention:
    from hitl.attention import attention

    async def go(factory: Factory) -> Attention:
        return attention(await factory.escalations.list_open(), factory.desk.policy, datetime.now(UTC))

    result: Attention = with_factory(go)
    return result


LEASE_WAIT_S = 10.0  # how long a decision waits for a process that is just letting go of the run


def _decide(settings: Settings, resume: bool | None, decide: Callable[[Factory], Awaitable[Escalation]]) -> None:
    """Record the decision, then continue its run here (``resume``; by default when no worker runs)
    or say who will."""

    async def main() -> tuple[str, Any]:
        from factory.wiring import open_factory, responders_for_run
        from factory.worker import workers_alive

        serve = responders_for_run(settings) if resume is not False else ()
        async with open_factory(settings, serve=serve) as factory:
            decided = await decide(factory)
            who = f" by {decided.decided_by}" if decided.decided_by else ""
            due = f", due {decided.sla_deadline:%Y-%m-%d %H:%M %Z}" if decided.waiting else ""
            echo(f"{decided.id} {decided.status.value}{who}{due}")
            if decided.waiting:  # deferred
                return f"run {decided.run_id} keeps waiting on it", None
            still = await factory.escalations.list_open(decided.run_id)
            if still:
                return f"run {decided.run_id} still waits on {', '.join(e.id for e in still)}", None
            worker = bool(await workers_alive(factory.redis, settings.redis_prefix))
            if resume is False or (resume is None and worker):
                if worker:
                    return f"a factory worker continues run {decided.run_id}", None
                return (
                    f"continue run {decided.run_id}: `factory resume {decided.run_id}` (or start `factory worker`)",
                    None,
                )
            run = await factory.store.get_run(decided.run_id)
            show_progress(factory, len(run.pipeline) if run else 0, False)
            outcome = await _drive_when_free(factory, decided.run_id)
            if outcome is None:
                return f"run {decided.run_id} is being continued by another process", None
            return "", outcome

    next_step, outcome = run_async(main())
    if outcome is not None:
        report(outcome, False)
    echo(next_step)


async def _drive_when_free(factory: Factory, run_id: str) -> Any:
    """Drive the run, waiting (bounded) for a process that holds it only for a moment, e.g. a
    `factory resume` that looked before the decision; None if it stays held (someone drives it)."""
    import asyncio

    from factory.errors import RunBusy

    deadline = asyncio.get_running_loop().time() + LEASE_WAIT_S
    while True:
        try:
            return await factory.engine.drive(run_id)
        except RunBusy:
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.25)


def worker(
    once: Annotated[bool, typer.Option("--once", help="One pass (SLA ladder, resumes), then exit.")] = False,
) -> None:
    """Keep runs moving: the SLA ladder, runs whose escalations were decided, runs whose process died."""
    import signal

    settings = load_settings()

    async def go() -> None:
        from factory.wiring import open_factory, responders_for_run
        from factory.worker import Worker, serve_worker

        async with open_factory(settings, serve=responders_for_run(settings)) as factory:
            work = Worker(factory, poll_s=settings.worker_poll_s, concurrency=settings.worker_runs)
            if once:
                await factory.desk.tick()
                step = await work.resume_pass()
                for outcome in step.resumed:
                    echo(f"resumed {outcome.run.id}: {outcome.run.status.value}")
                return
            import asyncio

            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            metrics = f" metrics on :{settings.metrics_port}/metrics;" if settings.metrics_port else ""
            say(f"worker: drives up to {settings.worker_runs} runs at once from the run queue and"
                f" {settings.worker_groupchats} group chats; SLA ladder every {settings.worker_poll_s:g}s;{metrics}"
                " stop with Ctrl-C")  # fmt: skip
            await serve_worker(factory, stop)
        say("worker stopped")

    def say(text: str) -> None:  # with JSON logs, stderr carries nothing but JSON lines
        if settings.log_format == "json":
            logging.getLogger("factory.worker").info(text)
        else:
            echo(text, err=True)

    run_async(go())
