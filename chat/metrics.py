"""The chat process's Prometheus ``/metrics``: its own counters (the runs it drove, the model calls it
made) and the factory's shared state, read afresh at each scrape.

Served on the chat's own port, ahead of Chainlit's routes (its catch-all page route would answer
first) and outside its login: the exposition holds counts and label values, never run ids, text a
model wrote or anything an operator typed. Behind a proxy open to the network, route ``/metrics``
to Prometheus only.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from chat.runtime import runtime
from factory.metrics_snapshot import metrics_of, snapshot

PATH = "/metrics"


async def scrape(request: Request) -> Response:
    factory = await runtime.open()
    metrics = metrics_of(factory)
    if metrics is None:
        return PlainTextResponse("this process keeps no metrics\n", status_code=404)
    metrics.apply(await snapshot(factory))
    payload, content_type = metrics.exposition()
    return Response(payload, headers={"Content-Type": content_type})


def mount(app: Any) -> None:
    """Add ``GET /metrics`` to the Chainlit app (a FastAPI app), before its other routes; once."""
    routes = app.router.routes
    if not any(getattr(r, "path", None) == PATH and getattr(r, "endpoint", None) is scrape for r in routes):
        routes.insert(0, Route(PATH, scrape, methods=["GET"], include_in_schema=False))
