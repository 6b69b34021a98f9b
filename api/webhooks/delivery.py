"""Sending deliveries: one signed HTTP attempt (``Sender``), and the loop that claims due deliveries
and records each outcome (``DeliveryLoop``).

An attempt is bounded by the policy's timeout whatever the receiver does (slow headers, a body that
never ends: the answer's body is never read). A 2xx answer delivers; any other status, a timeout or
a connection error is retried after an exponential backoff with jitter (or the receiver's
Retry-After, capped) until the attempts are spent, then the delivery is dead. A redirect is followed
only to the same origin and only when it keeps the method (307/308): a receiver cannot bounce a
signed request to another host. Unless private addresses are allowed (FACTORY_WEBHOOK_ALLOW_PRIVATE),
each connection goes only to a public address its host resolves to then (``guarded.py``); a host that
resolves into the factory's own network is a failed attempt ("refused: …"), retried like any other.

Concurrency is bounded in all (``concurrency`` requests in flight) and per webhook
(``per_webhook``), so a receiver that is down holds at most its own share of the senders for at
most the timeout, and the other webhooks' deliveries go on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from api.webhooks.base import Attempt, Claimed, DeliveryPolicy, DeliveryStatus, Target, WebhookStore
from api.webhooks.formats import body_bytes
from api.webhooks.guarded import AddressRefused, GuardedBackend, GuardedTransport, Resolver, system_resolver
from api.webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)
USER_AGENT = "factory-webhooks/1"
MAX_REDIRECTS = 3
_PRUNE_EVERY_S = 600.0


def http_client(
    policy: DeliveryPolicy,
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    allow_private: bool = False,
    resolver: Resolver = system_resolver,
) -> httpx.AsyncClient:
    """The client deliveries are sent with: the policy's timeout, no redirects followed on its own,
    connections bounded by the policy's concurrency, and made only to public addresses (resolved by
    ``resolver`` when connecting, bounded by the timeout: ``api/webhooks/guarded.py``) unless
    ``allow_private``, when httpx connects as it does by itself. A ``transport`` (tests) replaces
    the network, and the address check with it."""
    limits = httpx.Limits(max_connections=policy.concurrency * 2, max_keepalive_connections=policy.concurrency)
    if transport is None and not allow_private:
        backend = GuardedBackend(resolver=resolver, resolve_timeout_s=policy.timeout_s)
        transport = GuardedTransport(backend, limits=limits)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(policy.timeout_s),
        follow_redirects=False,
        limits=limits,
        headers={"User-Agent": USER_AGENT},
        transport=transport,
    )


class Sender:
    """One signed POST of a delivery's body, bounded by ``timeout_s`` in all."""

    def __init__(self, client: httpx.AsyncClient, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def send(self, target: Target, delivery_id: str, event_type: str, payload: dict[str, Any]) -> Attempt:
        body = body_bytes(payload)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(target.secret, body),
            EVENT_HEADER: event_type,
            DELIVERY_HEADER: delivery_id,
        }
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                status, retry_after, error = await self._post(target.url, body, headers)
        except TimeoutError:
            status, retry_after, error = None, None, f"no answer within {self._timeout_s:g}s"
        except httpx.HTTPError as exc:
            status, retry_after, error = None, None, _short(exc, target.url)
        elapsed = (time.perf_counter() - started) * 1000
        ok = status is not None and 200 <= status < 300
        if not ok and error is None:
            error = f"the receiver answered {status}"
        return Attempt(ok=ok, status=status, error=None if ok else error, elapsed_ms=elapsed, retry_after_s=retry_after)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, float | None, str | None]:
        for _ in range(MAX_REDIRECTS + 1):
            request = self._client.build_request("POST", url, content=body, headers=headers)
            response = await self._client.send(request, stream=True)  # the body is never read
            await response.aclose()
            if response.status_code not in (307, 308):
                if 300 <= response.status_code < 400:
                    return (
                        response.status_code,
                        None,
                        (
                            f"the receiver answered {response.status_code} (a redirect that changes the method is not"
                            " followed); register the URL it redirects to"
                        ),
                    )
                return response.status_code, _retry_after(response), None
            location = response.headers.get("location", "")
            following = urljoin(url, location)
            if not location or _origin(following) != _origin(url):
                return (
                    response.status_code,
                    None,
                    (
                        f"the receiver answered {response.status_code} to another host, which is never followed;"
                        " register the URL it redirects to"
                    ),
                )
            url = following
        return response.status_code, None, f"more than {MAX_REDIRECTS} redirects; register the final URL"


class DeliveryLoop:
    """Claims due deliveries and sends them, ``policy.concurrency`` at a time, until stopped."""

    def __init__(
        self,
        store: WebhookStore,
        sender: Sender,
        policy: DeliveryPolicy,
        *,
        jitter: Callable[[], float] = random.random,
        log_days: float | None = 30.0,
    ) -> None:
        self._store = store
        self._sender = sender
        self._policy = policy
        self._jitter = jitter
        self._log_days = log_days
        self._next_prune = 0.0

    async def deliver(self, claimed: Claimed) -> Attempt:
        """Send one claimed delivery and record the outcome (delivered, retry later, or dead)."""
        d, policy = claimed.delivery, self._policy
        attempt = await self._sender.send(claimed.target, d.id, d.event_type, d.payload)
        if attempt.ok:
            status, retry_in = DeliveryStatus.DELIVERED, 0.0
        elif d.attempts >= policy.attempts:
            status, retry_in = DeliveryStatus.DEAD, 0.0
            log.warning("webhook delivery %s (%s to %s) is dead after %d attempts: %s", d.id, d.event_type,
                        d.webhook_id, d.attempts, attempt.error)  # fmt: skip
        else:
            status, retry_in = DeliveryStatus.PENDING, policy.delay_s(d.attempts, self._jitter())
            if attempt.retry_after_s is not None:
                retry_in = max(retry_in, min(attempt.retry_after_s, policy.backoff_cap_s))
        recorded = await self._store.finish(
            d.id, claimed.token, status, http_status=attempt.status, error=attempt.error, retry_in_s=retry_in
        )
        if not recorded:
            log.info("webhook delivery %s was taken over by another sender before its outcome was recorded", d.id)
        return attempt

    async def serve(self, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set: claim while a slot is free; wait for a slot, ``wake`` (new
        deliveries stored) or the poll. On stop, the requests in flight end within their timeout."""
        wake = wake or asyncio.Event()
        active: dict[asyncio.Task[None], str] = {}  # task -> webhook id
        while not stop.is_set():
            wake.clear()  # before the claim: deliveries stored while it runs wake the next round
            await self._claim_into(active)
            await self._prune()
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
            await asyncio.wait([*waiters, *active], timeout=self._policy.poll_s, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            for task in [t for t in active if t.done()]:
                del active[task]
        if active:
            _, pending = await asyncio.wait(active, timeout=self._policy.timeout_s + 1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)

    async def _claim_into(self, active: dict[asyncio.Task[None], str]) -> None:
        free = self._policy.concurrency - len(active)
        if free <= 0:
            return
        try:
            claimed = await self._store.claim(
                free, per_webhook=self._policy.per_webhook, busy=Counter(active.values()), lease_s=self._policy.lease_s
            )
        except Exception as exc:  # PostgreSQL away: the next poll tries again
            log.warning("webhook deliveries could not be claimed: %s", exc)
            return
        for one in claimed:
            active[asyncio.create_task(self._deliver_logged(one), name=f"webhook {one.delivery.id}")] = (
                one.target.webhook_id
            )

    async def _deliver_logged(self, claimed: Claimed) -> None:
        try:
            await self.deliver(claimed)
        except Exception as exc:  # the claim lapses and the delivery is tried again
            log.warning("webhook delivery %s could not be recorded: %s", claimed.delivery.id, exc)

    async def _prune(self) -> None:
        """Every few minutes, delivered rows older than ``log_days`` leave the log (a bounded batch)."""
        now = asyncio.get_running_loop().time()
        if self._log_days is None or now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY_S
        try:
            removed = await self._store.prune(older_than_days=self._log_days)
        except Exception as exc:  # tried again at the next prune
            log.warning("webhook log could not be pruned: %s", exc)
            return
        if removed:
            log.info("webhook log: %d delivered rows older than %g days removed", removed, self._log_days)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if response.status_code in (429, 503) and value.isdigit():
        return float(value)
    return None


def _short(exc: Exception, url: str) -> str:
    """A transport error in a few words, never the URL (it may carry a token)."""
    text = str(exc).replace(url, "<url>").strip() or type(exc).__name__
    if isinstance(exc.__cause__, AddressRefused):
        return f"refused: {text}"[:300]
    kind = {
        httpx.ConnectError: "cannot connect",
        httpx.TimeoutException: "timed out",
        httpx.RemoteProtocolError: "broken answer",
    }
    label = next((v for k, v in kind.items() if isinstance(exc, k)), type(exc).__name__)
    return f"{label}: {text}"[:300]
