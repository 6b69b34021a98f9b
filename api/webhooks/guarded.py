"""Deliveries that cannot be aimed at the factory's own network, whatever DNS answers at send time.

A host is resolved when a connection is opened (bounded by a timeout, off the event loop), every
address it resolves to is vetted (``addresses.address_kind``), and the connection is made to a
vetted address itself, so a second lookup cannot swap it for another (DNS rebinding). TLS still
checks the certificate against the URL's host (httpcore hands the name, not the address, to TLS as
the server name) and the request still carries it as ``Host``. Each connection, a redirect's too,
goes through this check.

httpx takes no network backend of its own: ``GuardedTransport`` is httpx's transport with its
connection pool built again on a ``GuardedBackend``. With it, no HTTP(S)_PROXY of the environment is
used (a proxy would do the resolving, out of sight of the check).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

import httpcore
import httpx

from api.webhooks.addresses import a_kind, address_kind, parse_address, refusal_advice

#: Resolves ``(host, port)`` to IP addresses (as text); the seam tests replace.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

MAX_ADDRESSES = 8  # of a host's addresses, tried in turn until one connects


class AddressRefused(httpcore.ConnectError):
    """A receiver's host resolved to an address in the factory's own network: nothing was sent.
    (A ``ConnectError``, so the send fails as any connection error does: retried, then dead.)"""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives ``host`` (``getaddrinfo``, in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to public addresses its host resolved to."""

    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        resolve_timeout_s: float = 5.0,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolve = resolver
        self._resolve_timeout_s = resolve_timeout_s
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface: the connect timeout)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last: httpcore.ConnectError | None = None
        for address in (await self.vetted(host, port, timeout))[:MAX_ADDRESSES]:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:  # this address is down: the host's next one
                last = exc
        assert last is not None  # vetted() returns at least one address
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused(f"a unix socket is local: {refusal_advice()}")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    async def vetted(self, host: str, port: int, timeout_s: float | None = None) -> list[str]:
        """The addresses ``host`` resolves to now, if every one is public; else ``AddressRefused``
        naming the first that is not (one private address is enough: which one a connection would
        use is the resolver's choice)."""
        limit = min(timeout_s, self._resolve_timeout_s) if timeout_s else self._resolve_timeout_s
        try:
            async with asyncio.timeout(limit):
                found = list(await self._resolve(host, port))
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"{host[:80]} did not resolve within {limit:g}s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"{host[:80]} does not resolve ({exc.strerror or exc})") from exc
        if not found:
            raise httpcore.ConnectError(f"{host[:80]} resolves to no address")
        for text in found:
            address = parse_address(text)
            kind = address_kind(address) if address is not None else "unreadable"
            if kind is not None:
                said = f"{host[:80]} is" if text == host else f"{host[:80]} resolves to {text},"
                raise AddressRefused(f"{said} {a_kind(kind)}: {refusal_advice()}")
        return found


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP transport (HTTP/1.1, TLS verified as usual) whose connections are opened by ``backend``."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, *, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        # httpx builds its pool without a way to pass a backend: the same pool again, with one.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
