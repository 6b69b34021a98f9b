"""What an assistant reads when a tool, a resource or the prompt is refused: the CLI's own sentence.

FastMCP wraps whatever a tool raises as ``Error executing tool NAME: ...`` and a resource template's
error twice over; the cause is found again here, in the exception's chain, and said plainly:

- a factory error (``factory.errors``): its message, as ``factory`` prints it after ``factory:``;
- a refusal of the guard (``api.problems.Problem``: no token, a revoked one, a narrow scope): its detail;
- invalid arguments (pydantic): each field and what is wrong with it, never the value that was sent;
- anything else: logged here with its traceback, and a sentence that names nothing internal.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from api.problems import Problem
from factory.errors import FactoryError

log = logging.getLogger(__name__)

UNEXPECTED = "the factory hit an unexpected error; it is logged on the server"
_SHOWN_FIELDS = 5


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it (``raise ... from``) or was being handled when it was raised, bounded."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def plain(exc: BaseException, what: str) -> str:
    """The sentence an assistant reads for ``exc``, raised while serving ``what`` (a tool's name, a URI)."""
    for cause in causes(exc):
        if isinstance(cause, FactoryError | Problem):
            return str(cause.detail if isinstance(cause, Problem) else cause)
        if isinstance(cause, ValidationError):
            return invalid(cause, what)
    log.error("%s failed", what, exc_info=exc)
    return UNEXPECTED


def invalid(exc: ValidationError, what: str) -> str:
    """``what``'s invalid arguments, each with what is wrong (the values themselves are not repeated)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:_SHOWN_FIELDS]:
        field = ".".join(str(p) for p in error.get("loc", ())) or "arguments"
        problems.append(f"{field}: {error.get('msg', 'invalid')}")
    more = exc.error_count() - len(problems)
    tail = f" (and {more} more)" if more > 0 else ""
    return f"invalid arguments for {what}: {'; '.join(problems)}{tail}"
