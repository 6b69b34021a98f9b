"""Webhooks never reach the factory's own network unless an admin allows it: URLs refused when
registered (IP literals, local names), and hosts whose DNS answer is private refused at delivery,
the failure recorded like any other; a vetted address is the one connected to."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from api.webhooks import DeliveryPolicy, DeliveryStatus, Webhooks
from api.webhooks.addresses import address_kind, host_refusal
from api.webhooks.delivery import http_client
from api.webhooks.guarded import GuardedBackend
from api.webhooks.in_memory import InMemoryWebhookStore
from api.webhooks.validation import check_url
from factory.errors import InputError
from factory.settings import Settings
from tests.unit.api.test_webhook_delivery import ListSource, serve_until

FAST = DeliveryPolicy(attempts=2, backoff_s=0.01, backoff_cap_s=0.02, timeout_s=2.0, concurrency=2, poll_s=0.02)

PUBLIC = [
    "https://example.com/hooks",
    "https://hooks.slack.com/services/T0/B0/X",
    "http://93.184.216.34:8080/h",
    "https://[2606:4700::1111]/h",
    "https://8.8.8.8/",
    "https://localhost.example.com/h",  # a name under a public domain, whatever its first label
]
LOCAL = [
    ("http://127.0.0.1:8080/h?token=abc", "127.0.0.1 is a loopback address"),
    ("http://127.9.9.9/", "loopback"),
    ("http://10.1.2.3/", "10.1.2.3 is a private address"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.10/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://100.64.0.1/", "shared \\(CGNAT\\)"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0:8000/", "0.0.0.0 is an unspecified address"),
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.2.1/", "special-purpose|private"),  # TEST-NET-1: documentation only
    ("http://[::1]:8080/", "::1 is a loopback address"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fd00::1]/", "private"),
    ("http://[::]/", "unspecified"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "that is 127.0.0.1\\) is a loopback address"),  # IPv4-mapped
    ("http://[::ffff:a9fe:a9fe]/", "that is 169.254.169.254\\) is a link-local address"),
    ("http://[2002:7f00:1::]/", "that is 127.0.0.1\\) is a loopback address"),  # 6to4
    ("http://[64:ff9b::a00:1]/", "that is 10.0.0.1\\) is a private address"),  # NAT64
    ("http://2130706433/", "127.0.0.1 is a loopback address"),  # what a resolver reads 127.0.0.1 from
    ("http://127.1/", "127.0.0.1 is a loopback"),
    ("http://0x7f000001/", "127.0.0.1 is a loopback"),
    ("http://localhost:8000/", "localhost is a local name"),
    ("http://LOCALHOST./", "localhost is a local name"),
    ("http://foo.localhost/", "foo.localhost is a local name"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal is a local name"),
    ("http://printer.local/", "local name"),
    ("http://nas.home.arpa/", "local name"),
]


@pytest.mark.parametrize("url", PUBLIC)
def test_public_urls_are_taken(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(("url", "says"), LOCAL)
def test_urls_into_the_factorys_own_network_are_refused_naming_the_setting(url: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as caught:
        check_url(url)
    message = str(caught.value)
    assert "factory's own network" in message and "FACTORY_WEBHOOK_ALLOW_PRIVATE=true" in message
    assert "token=abc" not in message and "meta-data" not in message  # the URL itself is never quoted


@pytest.mark.parametrize("url", [u for u, _ in LOCAL] + PUBLIC)
def test_with_the_setting_on_every_url_is_taken(url: str) -> None:
    assert check_url(url, allow_private=True) == url


def test_the_setting_is_off_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no factory.toml
    monkeypatch.delenv("FACTORY_CONFIG", raising=False)
    monkeypatch.delenv("FACTORY_WEBHOOK_ALLOW_PRIVATE", raising=False)
    assert Settings().webhook_allow_private is False
    monkeypatch.setenv("FACTORY_WEBHOOK_ALLOW_PRIVATE", "true")
    assert Settings().webhook_allow_private is True


@pytest.mark.parametrize(
    ("address", "kind"),
    [("1.1.1.1", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None), ("100.63.255.255", None),
     ("100.127.255.255", "shared (CGNAT)"), ("198.18.0.1", "private"), ("fec0::1", "site-local"),
     ("64:ff9b::808:808", None), ("64:ff9b:1::1", "local NAT64"), ("::127.0.0.1", "reserved")],
)  # fmt: skip
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ip_address(address)) == kind


def test_a_name_is_judged_by_itself_at_registration() -> None:
    assert host_refusal("internal.example.com") is None  # its DNS answer is checked at delivery
    assert host_refusal("cafe.babe") is None  # hex-looking labels are not an address
    assert host_refusal("x.internal") == "x.internal is a local name"


class Receiver:
    """A real HTTP server on 127.0.0.1 recording each request's path and Host header."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.seen.append((self.path, self.headers.get("Host", "")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@pytest.fixture
def receiver() -> Iterable[Receiver]:
    made = Receiver()
    thread = threading.Thread(target=made.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        made.server.shutdown()
        made.server.server_close()


def resolving(answers: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    """A resolver answering from ``answers`` (an unknown name: the OSError getaddrinfo raises)."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise OSError(-2, "Name or service not known")
        return answers[host]

    return resolve


async def test_a_name_that_resolves_to_loopback_at_delivery_is_refused_and_recorded(receiver: Receiver) -> None:
    """DNS rebinding: the name looked public when registered; at delivery it resolves to loopback,
    where a receiver listens. Nothing reaches it; each attempt fails, and the delivery ends dead."""
    store, source = InMemoryWebhookStore(), ListSource()
    resolver = resolving({"hooks.example.com": ["127.0.0.1"]})
    service = Webhooks(store, FAST, source=source, resolver=resolver)
    added = await service.add(f"http://hooks.example.com:{receiver.port}/hook", ["run.failed"])
    source.add("1-0", "run.failed")
    await serve_until(service, lambda: store._rows and next(iter(store._rows.values())).status is DeliveryStatus.DEAD)
    [dead] = await service.dead()
    assert (dead.attempts, dead.last_status) == (FAST.attempts, None)
    assert dead.last_error is not None and dead.last_error.startswith(
        "refused: hooks.example.com resolves to 127.0.0.1, a loopback address"
    )
    assert "FACTORY_WEBHOOK_ALLOW_PRIVATE" in dead.last_error
    ping = await service.test(added.webhook.id)
    assert not ping.ok and ping.error is not None and ping.error.startswith("refused: ")
    assert receiver.seen == []


@pytest.mark.parametrize(
    "answer", [["93.184.216.34", "10.0.0.7"], ["::ffff:169.254.169.254"], ["fd12::1", "2606:4700::1111"]]
)
async def test_one_private_address_among_the_answers_is_enough_to_refuse(answer: list[str]) -> None:
    backend = GuardedBackend(resolver=resolving({"mixed.example.com": answer}))
    with pytest.raises(httpcore.ConnectError, match="resolves to .*, a (private|link-local) address"):
        await backend.vetted("mixed.example.com", 443)


async def test_resolution_is_bounded_and_its_failures_say_so() -> None:
    async def hangs(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(30)
        return []

    with pytest.raises(httpcore.ConnectTimeout, match="did not resolve within 0.05s"):
        await GuardedBackend(resolver=hangs, resolve_timeout_s=0.05).vetted("slow.example.com", 443)
    with pytest.raises(httpcore.ConnectError, match="does not resolve \\(Name or service not known\\)"):
        await GuardedBackend(resolver=resolving({})).vetted("gone.example.com", 443)
    with pytest.raises(httpcore.ConnectError, match="resolves to no address"):
        await GuardedBackend(resolver=resolving({"empty.example.com": []})).vetted("empty.example.com", 443)


class Redirected(httpcore.AsyncNetworkBackend):
    """Records the address each connection is asked for, and opens it to the loopback receiver."""

    def __init__(self, port: int) -> None:
        self.asked: list[tuple[str, int]] = []
        self._port = port
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.asked.append((host, port))
        return await self._real.connect_tcp("127.0.0.1", self._port, timeout)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@asynccontextmanager
async def guarded_client(backend: GuardedBackend) -> AsyncIterator[httpx.AsyncClient]:
    from api.webhooks.guarded import GuardedTransport

    transport = GuardedTransport(backend, limits=httpx.Limits(max_connections=2))
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        yield client


async def test_the_connection_is_made_to_the_vetted_address_with_the_name_kept(receiver: Receiver) -> None:
    calls: list[str] = []
    inner = Redirected(receiver.port)
    backend = GuardedBackend(resolver=resolving({"hooks.example.com": ["93.184.216.34"]}, calls), inner=inner)
    async with guarded_client(backend) as client:
        answer = await client.post("http://hooks.example.com:8123/hook", content=b"{}")
    assert answer.status_code == 204
    assert calls == ["hooks.example.com"]  # resolved once, by the guard
    assert inner.asked == [("93.184.216.34", 8123)]  # connected to the address vetted, not the name
    assert receiver.seen == [("/hook", "hooks.example.com:8123")]


async def test_the_delivery_client_is_guarded_unless_private_addresses_are_allowed(receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.port}/direct"  # an IP literal: no lookup, still vetted
    async with http_client(FAST) as guarded:
        with pytest.raises(httpx.ConnectError, match="127.0.0.1 is a loopback address"):
            await guarded.post(url, content=b"{}")
    assert receiver.seen == []
    async with http_client(FAST, allow_private=True) as allowed:
        assert (await allowed.post(url, content=b"{}")).status_code == 204
    assert receiver.seen == [("/direct", f"127.0.0.1:{receiver.port}")]
