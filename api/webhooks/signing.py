"""Signed webhook requests: HMAC-SHA256 over a timestamp and the raw body, Stripe's scheme.

Every request carries ``Factory-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
A receiver checks it with ``verify_signature`` (this module needs only the standard library and
``factory.errors``, so it can be copied into a receiver): the signature proves the body came from
the factory and was not changed; the timestamp bounds how long a captured request can be replayed
(``tolerance_s``), and the ``Factory-Delivery`` id — the same on every retry of a delivery — lets
the receiver drop a request it has already handled within that window.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from api.webhooks.base import SignatureError

SIGNATURE_HEADER = "Factory-Signature"
EVENT_HEADER = "Factory-Event"
DELIVERY_HEADER = "Factory-Delivery"
SECRET_PREFIX = "whsec_"
_MAX_HEADER = 1024  # a header longer than this is not ours: refused before it is parsed


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, urlsafe base64, prefixed so it is recognised in a leak."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, now: float | None = None) -> str:
    """The ``Factory-Signature`` header value for ``body`` sent at ``now`` (default: the clock)."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def verify_signature(
    secret: str, header: str | None, body: bytes, *, now: float | None = None, tolerance_s: float = 300
) -> int:
    """Check a request's ``Factory-Signature`` ``header`` against its raw ``body``; returns its
    timestamp. Raises ``SignatureError`` saying what is wrong: no header, not ``t=…,v1=…``, a
    timestamp more than ``tolerance_s`` from ``now`` (a replay, or a clock off), or no ``v1``
    signature that matches (another secret, or a changed body). Compare the raw bytes received,
    before any JSON parsing."""
    if not header or not header.strip():
        raise SignatureError(f"the request has no {SIGNATURE_HEADER} header; it was not sent by the factory")
    if len(header) > _MAX_HEADER:
        raise SignatureError(f"the {SIGNATURE_HEADER} header is over {_MAX_HEADER} characters; it is not ours")
    timestamp, candidates = _parse(header)
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance_s:
        raise SignatureError(
            f"the signature's timestamp is {abs(clock - timestamp):.0f}s from now, over the {tolerance_s:.0f}s"
            " tolerance: a replayed request, or a clock that is off (sync it with NTP)"
        )
    expected = signature(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, given) for given in candidates):
        raise SignatureError(
            "the signature does not match the body: another secret (the webhook's secret is shown once, when it"
            " is added), or the body was changed on the way (verify the raw bytes, before parsing them)"
        )
    return timestamp


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.strip())
    if timestamp is None or not candidates:
        raise SignatureError(f"the {SIGNATURE_HEADER} header is not of the form t=<unix seconds>,v1=<hex signature>")
    return timestamp, candidates


__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "new_secret",
    "sign",
    "signature",
    "verify_signature",
]
