"""Webhook signatures: what a receiver's ``verify_signature`` accepts and what it refuses, and why."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from api.webhooks import SignatureError, sign, verify_signature
from api.webhooks.signing import new_secret

SECRET = "whsec_test-secret"
BODY = b'{"id":"dlv-1","type":"escalation.opened"}'
NOW = 1_780_000_000


def test_a_signed_body_verifies_and_gives_its_timestamp() -> None:
    header = sign(SECRET, BODY, now=NOW)
    assert header.startswith(f"t={NOW},v1=")
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"  # the documented scheme, computable by any receiver
    assert verify_signature(SECRET, header, BODY, now=NOW + 10) == NOW


@pytest.mark.parametrize(
    ("header", "body", "secret", "now", "says"),
    [
        (None, BODY, SECRET, NOW, "no Factory-Signature header"),
        ("", BODY, SECRET, NOW, "no Factory-Signature header"),
        ("sha256=abc", BODY, SECRET, NOW, "not of the form"),
        (f"t={NOW}", BODY, SECRET, NOW, "not of the form"),
        ("v1=abc", BODY, SECRET, NOW, "not of the form"),
        ("t=x" * 400, BODY, SECRET, NOW, "over 1024 characters"),
        (sign(SECRET, BODY, now=NOW), BODY + b" ", SECRET, NOW, "does not match the body"),
        (sign(SECRET, BODY, now=NOW), BODY, "whsec_other", NOW, "another secret"),
        (sign(SECRET, BODY, now=NOW), BODY, SECRET, NOW + 301, "over the 300s tolerance"),
        (sign(SECRET, BODY, now=NOW), BODY, SECRET, NOW - 301, "a replayed request"),
    ],
)
def test_what_is_refused_says_why(header: str | None, body: bytes, secret: str, now: int, says: str) -> None:
    with pytest.raises(SignatureError, match=says):
        verify_signature(secret, header, body, now=now)


def test_a_replayed_timestamp_cannot_be_moved_forward() -> None:
    """Changing ``t`` to pass the tolerance breaks the signature: the timestamp is signed too."""
    old = sign(SECRET, BODY, now=NOW)
    moved = old.replace(f"t={NOW}", f"t={NOW + 3600}")
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(SECRET, moved, BODY, now=NOW + 3600)


def test_any_of_several_v1_signatures_may_match() -> None:
    good = sign(SECRET, BODY, now=NOW).split(",v1=")[1]
    assert verify_signature(SECRET, f"t={NOW},v1=00ff,v1={good}", BODY, now=NOW) == NOW


def test_the_tolerance_is_the_receivers_to_choose() -> None:
    header = sign(SECRET, BODY, now=NOW)
    assert verify_signature(SECRET, header, BODY, now=NOW + 3000, tolerance_s=3600) == NOW


def test_secrets_are_fresh_and_recognisable() -> None:
    first, second = new_secret(), new_secret()
    assert first != second and first.startswith("whsec_") and len(first) > 40
