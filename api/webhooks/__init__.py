"""Webhooks: signed notifications of escalations and runs, delivered with retries, a delivery log
and a replayable dead letter (issue 18, part 4). ``Webhooks`` is the service front doors call;
``verify_signature`` is what a receiver checks a request with."""

from api.webhooks.base import (
    EVENT_TYPES,
    PING,
    Attempt,
    Claimed,
    Delivery,
    DeliveryPolicy,
    DeliveryStatus,
    EventSource,
    Registered,
    SignatureError,
    Target,
    Webhook,
    WebhookFormat,
    WebhookNotFound,
    WebhookStore,
)
from api.webhooks.service import Webhooks
from api.webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign, verify_signature

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_TYPES",
    "PING",
    "SIGNATURE_HEADER",
    "Attempt",
    "Claimed",
    "Delivery",
    "DeliveryPolicy",
    "DeliveryStatus",
    "EventSource",
    "Registered",
    "SignatureError",
    "Target",
    "Webhook",
    "WebhookFormat",
    "WebhookNotFound",
    "WebhookStore",
    "Webhooks",
    "sign",
    "verify_signature",
]
