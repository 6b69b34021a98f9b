"""What kind of failure a model call met, from LiteLLM's exception classes, status codes and texts.

The kind decides whether the deployment cools down (``routing.cooldowns``) and is what the ledger,
the audit and the live events show. LiteLLM wraps several failures unexpectedly: a refused or dropped
connection and a missing key arrive as 500s, a body that is not JSON as a 500 or a connection error;
the texts below are what ``tests/fakeprovider.py`` showed LiteLLM 1.106 to produce.
"""

from __future__ import annotations

import asyncio
import json

from routing.base import FallbackKind


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    try:
        value = headers.get("retry-after") if headers is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def classify(exc: BaseException) -> tuple[FallbackKind, float | None]:
    """What kind of failure ``exc`` is (by LiteLLM's exception classes and status codes), and a
    429's Retry-After."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) or name in ("Timeout", "APITimeoutError") or status == 408:
        return "timeout", None
    if name == "RateLimitError" or status == 429:
        return "rate_limit", _retry_after(exc)
    text = str(exc).lower()
    if name in ("AuthenticationError", "PermissionDeniedError") or status in (401, 403):
        return "auth", None
    if "missing credentials" in text or "api_key client option must be set" in text:
        return "auth", None  # LiteLLM reports a missing key as a 500
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return "bad_request", None  # the provider refused this request (its text may say "invalid json")
    if any(t in text for t in ("expecting value", "jsondecodeerror", "unterminated string", "invalid json")):
        return "bad_output", None  # the provider's body is not JSON (LiteLLM calls it a 500 or a connection error)
    if (
        name == "APIConnectionError"
        or isinstance(exc, ConnectionError | OSError)
        or any(t in text for t in ("connection error", "connection refused", "connecterror", "disconnected"))
    ):
        return "connection", None
    if name in ("BadRequestError", "ContextWindowExceededError", "UnsupportedParamsError", "NotFoundError") or (
        isinstance(status, int) and 400 <= status < 500
    ):
        return "bad_request", None
    if name in ("InternalServerError", "ServiceUnavailableError", "APIError") or (
        isinstance(status, int) and status >= 500
    ):
        return "server_error", None
    if isinstance(exc, ValueError | json.JSONDecodeError):
        return "bad_output", None
    return "other", None


def refused_schema(exc: BaseException) -> bool:
    """A provider's refusal of JSON-schema output (then JSON mode is asked instead)."""
    text = str(exc).lower()
    return classify(exc)[0] == "bad_request" and ("response_format" in text or "json_schema" in text)


class NoKey(RuntimeError):
    """A deployment whose key reference resolves to nothing: skipped like an unreachable one."""


def kind_of(exc: BaseException) -> tuple[FallbackKind, float | None]:
    """``classify``, with a missing key named as such."""
    return ("no_key", None) if isinstance(exc, NoKey) else classify(exc)
