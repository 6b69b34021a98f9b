"""Errors as RFC 9457 problem details, with the message the CLI would give.

Every refusal of the API is a ``application/problem+json`` body ``{type, title, status, detail}``
(plus ``errors`` for invalid fields). The factory's own errors keep their text: the operator reads
the same sentence whichever front door refused them. An unexpected error is logged with its
traceback and answered with a generic 500 that names nothing internal.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from api.webhooks.base import WebhookNotFound
from factory import errors

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://factory.invalid/problems/"  # identifiers, not pages: RFC 9457 §3.1.1 allows that

#: Most specific first: the first class an error is an instance of gives its status and type.
_STATUS: list[tuple[type[BaseException], int, str]] = [
    (errors.RunNotFound, 404, "run-not-found"),
    (errors.EscalationNotFound, 404, "escalation-not-found"),
    (errors.TokenNotFound, 404, "token-not-found"),
    (WebhookNotFound, 404, "webhook-not-found"),
    (errors.RunFinished, 409, "run-finished"),
    (errors.UnknownTeam, 422, "unknown-team"),
    (errors.DecisionConflict, 409, "decision-conflict"),
    (errors.DecisionRefused, 422, "decision-refused"),
    (errors.RunBusy, 409, "run-busy"),
    (errors.LeaseLost, 409, "run-busy"),
    (errors.BudgetExceeded, 402, "budget-exceeded"),
    (errors.RoutingError, 502, "model-unavailable"),
    (errors.InputError, 422, "invalid-input"),
    (errors.ConfigError, 422, "invalid-configuration"),
    (errors.ServiceUnavailable, 503, "service-unavailable"),
    (errors.ServiceRefused, 500, "service-refused"),
    (errors.AuditTampered, 409, "audit-tampered"),
]
_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    402: "Budget exhausted",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "Model unavailable",
    503: "Service unavailable",
}


class Problem(Exception):
    """A refusal the API raises itself (auth, scopes, limits, bad JSON)."""

    def __init__(
        self, status: int, detail: str, *, kind: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind = status, detail, kind or _slug(status)
        self.headers = headers or {}
        self.extra = extra


def _slug(status: int) -> str:
    return _TITLES.get(status, "error").lower().replace(" ", "-")


def problem_response(
    status: int, detail: str, *, kind: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": TYPE_BASE + (kind or _slug(status)),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def for_factory_error(exc: errors.FactoryError) -> tuple[int, str]:
    """The status and problem type of one of the factory's errors."""
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal-error"


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, kind=exc.kind, headers=exc.headers, **exc.extra)

    @app.exception_handler(errors.FactoryError)
    async def _factory(request: Request, exc: errors.FactoryError) -> JSONResponse:
        status, kind = for_factory_error(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return problem_response(status, str(exc), kind=kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_field_problem(e) for e in exc.errors()]
        if any(p["type"] == "json_invalid" for p in problems):
            return problem_response(400, "the body is not valid JSON; send a JSON object", kind="bad-json")
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        return problem_response(422, detail, kind="invalid-request", errors=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint {request.url.path}; see /api/v1/openapi.json"
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        wrapped = _service_error(request, exc)  # PostgreSQL or Redis went away (503) or refused (500)
        if wrapped is not None:
            log.error("%s %s: %s", request.method, request.url.path, wrapped)
            status, kind = for_factory_error(wrapped)
            return problem_response(status, str(wrapped), kind=kind)
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "the factory hit an unexpected error; it is logged on the server")


def _service_error(request: Request, exc: Exception) -> errors.FactoryError | None:
    from factory.service_errors import service_error

    api = getattr(request.app.state, "api", None)
    endpoints = api.ops.factory.endpoints if api is not None else None
    return service_error(
        exc,
        database_url=endpoints.database_url if endpoints else None,
        redis_url=endpoints.redis_url if endpoints else None,
    )


def _field_problem(error: Any) -> dict[str, str]:
    where = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return {
        "field": ".".join(where) or "body",
        "message": str(error.get("msg", "invalid")),
        "type": str(error.get("type", "")),
    }
