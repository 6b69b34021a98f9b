"""What every ``factory`` command shares: exit codes, errors, settings, JSON, run reports, progress,
and the one way text reaches the terminal.

Every text a command prints goes through ``echo`` (or ``err``), which neutralises control
characters: a model's blocker or a user's answer cannot retitle the terminal, move the cursor or
overwrite a line. JSON output is escaped by ``json.dumps`` itself (ASCII only).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from factory.errors import FactoryError

if TYPE_CHECKING:
    from factory.settings import Settings
    from factory.wiring import Factory
    from teams.pipeline import RunOutcome

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_WAITING = 0, 1, 2, 3


# C0 controls, DEL, C1 controls, bidirectional overrides and marks (which reorder what is shown),
# line and paragraph separators, and lone surrogates (undecodable input; not printable at all).
_OTHER = r"\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_LINE = re.compile(rf"[\x00-\x1f{_OTHER}]")
_UNSAFE_LINES = re.compile(rf"[\x00-\x08\x0b-\x1f{_OTHER}]")  # keeps \t (0x09) and \n (0x0a)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object, *, lines: bool = False) -> str:
    """``text`` with every control character shown as a visible escape (``\\x1b``); ``lines``
    keeps newlines and tabs (multi-line text such as an answer), otherwise they are escaped too."""
    return (_UNSAFE_LINES if lines else _UNSAFE_LINE).sub(_escape, str(text))


def echo(text: object = "", *, err: bool = False, lines: bool = False) -> None:
    """Print ``text`` (made ``safe``) to stdout, or stderr with ``err``."""
    typer.echo(safe(text, lines=lines), err=err)


def err(message: str, code: int) -> NoReturn:
    """``factory: message`` on one line of stderr, then exit with ``code``. A message with line breaks
    (a service's own error often has a DETAIL and a HINT line) is joined into one line, readably."""
    echo("factory: " + " ".join(part.strip() for part in message.splitlines() if part.strip()), err=True)
    raise typer.Exit(code)


def _undecodable(value: str) -> str | None:
    """``value`` as shown in an error if it is not UTF-8 text (Python keeps the bytes of a
    non-UTF-8 argument as lone surrogates), else None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(value).decode("utf-8", "backslashreplace")
        return shown if len(shown) <= 60 else shown[:57] + "..."
    return None


def check_text_input(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Refuse (exit 2, one line) an argument or a ``FACTORY_*`` setting that is not UTF-8 text,
    before any command parses it: every text reaches PostgreSQL, which stores only UTF-8."""
    for index, arg in enumerate(argv[1:], start=1):
        shown = _undecodable(arg)
        if shown is None:
            continue
        option, _, value = arg.partition("=")
        previous = argv[index - 1] if index > 1 else ""
        if option.startswith("--") and value and _undecodable(option) is None:
            where = f"the value of {option} (argument {index})"
            shown = _undecodable(value) or shown
        elif previous.startswith("-") and _undecodable(previous) is None:
            where = f"argument {index} (after {previous})"
        else:
            where = f"argument {index}"
        err(f"{where} is not UTF-8 text ({shown}); give it as UTF-8", EXIT_INPUT)
    for name, value in environ.items():
        if name.upper().startswith("FACTORY_") and (_undecodable(name) or _undecodable(value)) is not None:
            err(f"the environment variable {_undecodable(name) or name} is not UTF-8 text; fix it", EXIT_INPUT)


def read_stdin(what: str, max_bytes: int) -> str:
    """Standard input as UTF-8 text of at most ``max_bytes``; exit 2 naming ``what`` otherwise."""
    data = sys.stdin.buffer.read(max_bytes + 1)
    if len(data) > max_bytes:
        err(f"the {what} on standard input is longer than {max_bytes} bytes; shorten it", EXIT_INPUT)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        err(f"the {what} on standard input is not UTF-8 text (byte {exc.start}); give it as UTF-8", EXIT_INPUT)


def load_settings() -> Settings:
    from pydantic import ValidationError

    from factory.settings import Settings
    from observability.logs import configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        err(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", EXIT_INPUT)
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_format == "text":  # JSON lines escape control characters themselves
        for handler in logging.getLogger().handlers:  # log lines quote model output and errors, too
            if not isinstance(handler.formatter, _SafeFormatter):
                handler.setFormatter(_SafeFormatter(handler.formatter or logging.Formatter()))
    return settings


class _SafeFormatter(logging.Formatter):
    """Another formatter's lines, made ``safe`` (a traceback keeps its lines)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return safe(self._inner.format(record), lines=True)


# The runs this command drove (seen on the event bus), for the way back after a service failure.
_DRIVEN: list[str] = []


def run_async(coro: Any, *, loop_factory: Callable[[], Any] | None = None) -> Any:
    """Run a command's coroutine (on a loop from ``loop_factory``, if given); a factory error, or a
    PostgreSQL or Redis failure that escaped it, becomes one ``factory: ...`` line and its exit code,
    never a traceback."""
    try:
        import asyncio  # here, not at the top: commands that run nothing start faster

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)
    except FactoryError as exc:
        err(_with_way_back(exc), exc.exit_code)
    except KeyboardInterrupt:
        err("interrupted; the run can be continued from its last committed stage", 130)
    except Exception as exc:
        from factory.service_errors import service_error  # a driver error raised outside open_factory

        wrapped = service_error(exc)
        if wrapped is None:
            raise
        err(_with_way_back(wrapped), wrapped.exit_code)


def _with_way_back(exc: FactoryError) -> str:
    from factory.errors import ServiceUnavailable

    if isinstance(exc, ServiceUnavailable) and _DRIVEN:
        return f"{exc}; then `factory resume {_DRIVEN[-1]}` continues the run from its last committed stage"
    return str(exc)


def print_json(data: Any) -> None:
    """JSON on stdout; ``json.dumps`` escapes every control character (and keeps to ASCII)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def progress(total: int) -> Any:
    """A subscriber that prints one line per stage event to stderr."""
    import time

    started: dict[int, float] = {}

    def show(event: Any) -> None:
        d = event.data
        stage = d.get("stage")
        label = f"[{stage + 1}/{total}] {d.get('team', '')}" if stage is not None else ""
        if event.type == "stage.started":
            started[stage] = time.monotonic()
            echo(f"  ... {label} running", err=True)
        elif event.type == "stage.completed":
            took = f"  {time.monotonic() - started[stage]:.1f}s" if stage in started else ""
            echo(
                f"  ok  {label} complete  tokens {d['tokens_in']}/{d['tokens_out']}"
                f"  confidence {d['confidence']:.2f}{took}",
                err=True,
            )
            for name, whose in (d.get("replaced") or {}).items():
                echo(f"      {label} replaced {name}, written by {whose}", err=True)
        elif event.type == "stage.checked":
            echo(f"  ..  {label} {checks_line(d)}", err=True)
        elif event.type == "stage.sent_back":
            echo(f"  <-  {label} runs again: checks of {d.get('by')} failed in its files", err=True)
        elif event.type == "stage.revised":
            echo(f"  ok  {label} revised its files; {d.get('by')} is checked again over them", err=True)
        elif event.type == "stage.sent_back_refused":
            echo(f"  xx  {label} revision not kept: {d.get('reason')}", err=True)
        elif event.type == "escalation.opened":
            echo(f"  !!  {label} needs you ({d['kind']}, {d['priority']}): {d['question']}", err=True)
        elif event.type == "run.failed":
            echo(f"  xx  {label} failed: {d['error']}", err=True)

    return show


def checks_line(d: dict[str, Any]) -> str:
    """A stage's verification figures in one line (``stage.checked`` event data or a stage's checks)."""
    if d.get("error"):
        return f"checks could not run: {d['error']}"
    line = f"checks: {d.get('run', 0)} run, {d.get('passed', 0)} passed, {d.get('failed', 0)} failed"
    if d.get("errored"):
        line += f", {d['errored']} errored"
    if d.get("skipped"):
        line += f", {d['skipped']} skipped"
    if d.get("tests_passed") or d.get("tests_failed"):
        line += f"; tests {d.get('tests_passed', 0)} passed, {d.get('tests_failed', 0)} failed"
    security = {k: v for k, v in (d.get("security") or {}).items() if v}
    if security:
        line += "; security " + ", ".join(f"{v} {k}" for k, v in security.items())
    if d.get("failing"):
        line += f" (failing: {', '.join(d['failing'])})"
    return line


def _remember_run(event: Any) -> None:
    if not _DRIVEN or _DRIVEN[-1] != event.run_id:
        _DRIVEN.append(event.run_id)


def show_progress(factory: Any, stages: int, as_json: bool) -> None:
    """Live per-stage lines on stderr: always for human output, and on a terminal even with --json.
    The runs driven are remembered, so a service failure can say which run to resume."""
    factory.bus.subscribe(_remember_run)
    if sys.stderr.isatty() or not as_json:
        factory.bus.subscribe(progress(stages))


def embedded_only(routing: Mapping[str, Any] | None) -> bool:
    """Whether a run's routing (``Run.routing``, as ``RoutingConfig.public()`` records it) serves every
    chat alias with the embedded 135M model alone, so its artifacts are for trying the factory. The
    scripted test model is not the embedded one; a run without a recorded routing is not judged."""
    from routing.config import EMBEDDED

    aliases = (routing or {}).get("aliases")
    if not isinstance(aliases, Mapping) or not aliases:
        return False
    return all(
        isinstance(chain, list) and chain and all(isinstance(d, Mapping) and d.get("model") == EMBEDDED for d in chain)
        for chain in aliases.values()
    )


def embedded_only_notice() -> list[str]:
    """What a text run summary adds when ``embedded_only``: the artifacts are not for use, and how to
    give the factory a real model."""
    from routing.config import EMBEDDED

    return [
        f"note: every model of this run was the embedded 135M model ({EMBEDDED}): its artifacts are for"
        " trying the factory, not for use",
        "      for real work: `factory routing set factory/coder MODEL` (likewise factory/architect, factory/fast,"
        " factory/cheap); for an API key, `factory secrets set NAME`, then --key-secret NAME",
    ]


def report(outcome: RunOutcome, as_json: bool) -> NoReturn:
    from teams.base import RunStatus

    if as_json:
        from factory.outcome_json import outcome_json

        print_json(outcome_json(outcome))
    else:
        echo(f"run {outcome.run.id}: {outcome.run.status.value}")
        echo(f"artifacts: {outcome.run.artifacts_dir}")
        echo(f"audit: {outcome.audit.entries} entries, head {outcome.audit.head_sha256[:16]}")
        for e in outcome.escalations:
            echo(f"waiting on you: {e.id} [{e.kind.value}/{e.priority.value}] {e.team}: {e.question}")
        if embedded_only(outcome.run.routing):
            for line in embedded_only_notice():
                echo(line)
        if outcome.error:
            echo(f"error: {outcome.error}", err=True)
    status = outcome.run.status
    code = {RunStatus.COMPLETE: EXIT_OK, RunStatus.WAITING_HUMAN: EXIT_WAITING}.get(status, EXIT_FAILED)
    raise typer.Exit(code)


def who_decides(settings: Settings, by: str | None) -> str:
    """Who decides: ``--by``, else FACTORY_OPERATOR, else the OS user; checked with the desk's own
    rule (not empty, not too long, no control characters) before any service is started."""
    from factory.errors import DecisionRefused
    from hitl.desk import checked_author

    if by is not None:
        who, source = by, "--by"
    elif settings.operator is not None:
        who, source = settings.operator, "FACTORY_OPERATOR"
    else:
        try:
            who, source = getpass.getuser(), "your user name (give --by)"
        except (KeyError, OSError):  # no user name in this environment (e.g. a container)
            return "operator"
    try:
        return checked_author(who)
    except DecisionRefused as exc:
        err(f"{source}: {exc}", exc.exit_code)


def with_factory(go: Callable[[Factory], Awaitable[Any]], settings: Settings | None = None) -> Any:
    settings = settings or load_settings()

    async def main() -> Any:
        from factory.wiring import open_factory

        async with open_factory(settings) as factory:
            return await go(factory)

    return run_async(main())
