"""Logging for the CLI, the workers and the chat: plain lines for a terminal, or one JSON object a line.

Every line carries the run, stage and team it was logged under when there is one (``log_context``,
set by the pipeline per run and per stage; a context variable, so concurrent runs in one process
never mix). No registered secret reaches a line (``observability.redact``), in either format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from observability.redact import install_log_redaction, redact

#: The fields every log line of the current task carries (run_id, stage, team).
_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("factory_log_context", default=None)
FIELDS = ("run_id", "stage", "team")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Tag every line logged in this block (and the tasks it starts) with ``fields``; restored after."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Tag the rest of the current ``log_context`` block with ``fields`` too (e.g. the stage now run);
    the block's end restores what was before it."""
    _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})


class ContextFilter(logging.Filter):
    """Copies the current ``log_context`` onto each record (``record.run_id`` and so on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, run_id/stage/team when known, the
    exception when there is one. Everything textual is redacted again here, so a formatter that runs
    without the redacting filter still leaks nothing."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value if isinstance(value, int | float) else redact(str(value))
        if record.exc_info and record.exc_info[1] is not None:
            line["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = redact(record.exc_text)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The terminal format, with ``[run stage team]`` after the level when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        where = [f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None]
        if not where:
            return text
        head, sep, rest = text.partition(": ")
        return f"{head} [{' '.join(where)}]{sep}{rest}"


def configure_logging(level: str = "WARNING", fmt: Literal["text", "json"] = "text") -> None:
    """Log to stderr (WARNING by default, so the CLI's output stays clean), as text or JSON lines."""
    logging.basicConfig(level=level.upper())
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
    install_log_redaction()  # no registered secret (a resolved API key) reaches a log line
