"""``/v1/webhooks``: notifications for other tools (admin): register, list, remove, test, and the
delivery log with its dead letter, which can be replayed. The same service as `factory webhooks`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from api.rest.app import Admin, State
from api.rest.schemas import Body
from api.webhooks import Webhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


class WebhookCreate(Body):
    url: str = Field(max_length=2048, description="The receiver's http(s) URL.")
    events: list[str] = Field(min_length=1, max_length=20, description="Event types, e.g. escalation.opened.")
    format: str = Field(default="json", max_length=20, description="json (signed factory JSON), slack or discord.")


def _service(api: State) -> Webhooks:
    from factory.wiring import webhooks

    return webhooks(api.ops.factory)


@router.get("", summary="Registered webhooks (URLs shortened: a Slack URL is itself a credential).")
async def list_webhooks(api: State, _: Admin) -> list[dict[str, Any]]:
    return [w.model_dump(mode="json") for w in await _service(api).list()]


@router.post("", status_code=201, summary="Register a webhook; its signing secret is in this answer only.")
async def add_webhook(body: WebhookCreate, api: State, token: Admin) -> dict[str, Any]:
    made = await _service(api).add(body.url, body.events, fmt=body.format, by=token.actor)
    return {"webhook": made.webhook.model_dump(mode="json"), "secret": made.secret}


@router.delete("/{webhook_id}", status_code=204, summary="Remove a webhook (and its secret).")
async def remove_webhook(webhook_id: str, api: State, token: Admin) -> Response:
    await _service(api).remove(webhook_id, by=token.actor)
    return Response(status_code=204)


@router.post("/{webhook_id}/test", summary="Send a signed ping now and say how the receiver answered.")
async def test_webhook(webhook_id: str, api: State, _: Admin) -> dict[str, Any]:
    attempt = await _service(api).test(webhook_id)
    return {"ok": attempt.ok, "status": attempt.status, "error": attempt.error, "elapsed_ms": attempt.elapsed_ms}


@router.get("/deliveries", summary="The delivery log, newest first (status: pending, delivered or dead).")
async def deliveries(
    api: State,
    _: Admin,
    webhook: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    last: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    found = await _service(api).deliveries(webhook_id=webhook, status=status, last=last)
    return [d.model_dump(mode="json") for d in found]


@router.post("/deliveries/{delivery_id}/replay", summary="Send a dead delivery again (attempts start over).")
async def replay(delivery_id: str, api: State, token: Admin) -> dict[str, Any]:
    return (await _service(api).replay(delivery_id, by=token.actor)).model_dump(mode="json")
