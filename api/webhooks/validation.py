"""What a registration may hold: an http(s) URL, known event types, a known format; and how a
URL is shown (never whole: a Slack or Discord webhook URL is itself a credential)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from api.webhooks.addresses import host_refusal, refusal_advice
from api.webhooks.base import EVENT_TYPES, WebhookFormat
from factory.errors import InputError

MAX_URL = 2048
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f]")  # controls and spaces: never part of a URL we send to
_SHOWN_SEGMENT = 24  # a first path segment up to this long is shown; longer ones may be a token
ID_PATTERN = re.compile(r"(wh|dlv)-[0-9a-f]{6,32}")


def new_webhook_id() -> str:
    return f"wh-{secrets.token_hex(6)}"


def new_delivery_id() -> str:
    return f"dlv-{secrets.token_hex(12)}"


def check_url(url: str, *, allow_private: bool = False) -> str:
    """``url`` stripped, if an http(s) URL with a host (and a valid port) that is not in the
    factory's own network (unless ``allow_private``: see ``api/webhooks/addresses.py``); else
    ``InputError``. The message never quotes it (it may carry a token), only its host."""
    url = url.strip()
    if not url:
        raise InputError("the webhook URL is empty; give the receiver's http(s) URL, e.g. https://example.com/hooks")
    if len(url) > MAX_URL:
        raise InputError(f"the webhook URL is over {MAX_URL} characters; give a shorter one")
    if _UNSAFE.search(url):
        raise InputError("the webhook URL holds a space or a control character; percent-encode it")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"{parts.scheme}:" if parts.scheme and len(parts.scheme) < 20 else "no scheme"
        raise InputError(f"a webhook URL must be http:// or https:// (it has {shown}), e.g. https://example.com/hooks")
    if not parts.hostname:
        raise InputError("the webhook URL has no host; write it whole, e.g. https://example.com/hooks")
    try:
        _ = parts.port
    except ValueError as exc:
        raise InputError("the webhook URL has a bad port; a port is a number from 1 to 65535") from exc
    if parts.fragment:
        raise InputError("the webhook URL has a #fragment, which is never sent; remove it")
    refused = None if allow_private else host_refusal(parts.hostname)
    if refused:
        raise InputError(f"the webhook URL points into the factory's own network ({refused}): {refusal_advice()}")
    return url


def check_events(events: Iterable[str]) -> list[str]:
    """The event types named (stripped, deduplicated, in the known order); ``InputError`` naming the
    unknown ones and the known list, or if none is named."""
    named = [e.strip() for e in events if e and e.strip()]
    if not named:
        raise InputError(f"name at least one event type to deliver: {', '.join(EVENT_TYPES)}")
    unknown = [e for e in dict.fromkeys(named) if e not in EVENT_TYPES]
    if unknown:
        shown = ", ".join(repr(e[:60]) for e in unknown[:5])
        raise InputError(f"unknown event type {shown}; a webhook can receive {', '.join(EVENT_TYPES)}")
    return [e for e in EVENT_TYPES if e in named]


def check_format(fmt: str | WebhookFormat) -> WebhookFormat:
    try:
        return WebhookFormat(str(fmt).strip().lower())
    except ValueError as exc:
        shown = repr(str(fmt)[:40])
        known = ", ".join(f.value for f in WebhookFormat)
        raise InputError(f"unknown webhook format {shown}; choose one of {known}") from exc


def check_id(value: str, what: str = "webhook") -> str:
    """An id as the factory makes them (``wh-…``, ``dlv-…``), else ``InputError`` (never a query)."""
    value = value.strip()
    prefix = "wh-" if what == "webhook" else "dlv-"
    if not ID_PATTERN.fullmatch(value) or not value.startswith(prefix):
        shown = repr(value[:40]) if value.isprintable() else "given"
        raise InputError(
            f"the {what} id {shown} is not valid; ids look like {prefix}1a2b3c (see `factory webhooks list`)"
        )
    return value


def shown_url(url: str) -> str:
    """The URL as listed: scheme, host and port, the first path segment when short, ``/…`` for the
    rest and ``?…`` for a query; never credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    segments = [s for s in parts.path.split("/") if s]
    path = ""
    if segments:
        first = segments[0]
        path = f"/{first}" if len(first) <= _SHOWN_SEGMENT else "/…"
        if len(segments) > 1 and not path.endswith("…"):
            path += "/…"
    query = "?…" if parts.query else ""
    return f"{parts.scheme.lower()}://{host}{port}{path}{query}"
