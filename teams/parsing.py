"""Turning raw model text into a ``TaskResult``, with errors a model can act on."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from observability.text import storable
from teams.results import TaskResult

MAX_OUTPUT_CHARS = 1_000_000
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class OutputProblem(ValueError):
    """Model output that is not a valid ``TaskResult``; the message says how to fix it."""


def _json_text(text: str) -> str:
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise OutputProblem("the answer contains no JSON object; reply with one JSON object only")
    return text[start : end + 1]


def parse_task_result(text: str) -> TaskResult:
    """Parse and validate; raise ``OutputProblem`` with a short, actionable reason."""
    return validate_task_result(json_object(text))


def json_object(text: str) -> dict[str, Any]:
    """The one JSON object in a model's answer, or ``OutputProblem``."""
    if not text or not text.strip():
        raise OutputProblem("the answer was empty; reply with one JSON object")
    if len(text) > MAX_OUTPUT_CHARS:
        raise OutputProblem(f"the answer is {len(text)} characters, over {MAX_OUTPUT_CHARS}; be shorter")
    try:
        # strict=False: grammar-constrained local models emit raw newlines inside strings.
        data = json.loads(_json_text(text), strict=False)
    except json.JSONDecodeError as exc:
        raise OutputProblem(f"the JSON does not parse: {exc.msg} at character {exc.pos}") from exc
    except RecursionError as exc:
        raise OutputProblem("the JSON is nested too deeply") from exc
    if not isinstance(data, dict):
        raise OutputProblem("the JSON must be an object with the TaskResult fields")
    return data


def validate_task_result(data: dict[str, Any]) -> TaskResult:
    """``TaskResult`` from parsed JSON, or ``OutputProblem`` listing the first problems."""
    try:
        return TaskResult.model_validate(data)
    except ValidationError as exc:
        raise OutputProblem(f"the JSON does not match TaskResult: {describe_errors(exc, 8)}") from exc


def describe_errors(exc: ValidationError, limit: int) -> str:
    """The first ``limit`` validation errors as one line: ``where: what``.

    A location or message may quote the model's own keys and values, and the line is audited: it
    is bounded and made storable."""
    text = "; ".join(
        f"{'.'.join(str(p)[:60] for p in err['loc']) or 'value'}: {err['msg'][:300]}"
        for err in exc.errors(include_url=False)[:limit]
    )
    return storable(text)
