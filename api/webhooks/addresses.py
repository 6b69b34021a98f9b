"""Which hosts a webhook may reach: public addresses only, unless an admin allows the factory's own
network with ``FACTORY_WEBHOOK_ALLOW_PRIVATE`` (as GitLab refuses "requests to the local network").

A webhook URL is chosen by whoever registers it, and the worker sends to it from inside the
factory's network: left open, a webhook is a way to make the factory POST to its own services
(Redis, PostgreSQL, the API on loopback) or read the cloud metadata service (169.254.169.254). So an
address is refused when it is loopback, private (RFC 1918, IPv6 unique local), link-local, shared
(CGNAT, 100.64/10), multicast, unspecified, reserved or any other special-purpose range; an IPv6
address that carries an IPv4 one (IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address. Names
that can only be local are refused too: ``localhost`` and ``*.localhost`` (RFC 6761), ``*.local``
(mDNS), ``*.internal`` (private use: ``metadata.google.internal``), ``*.home.arpa``.

This is checked twice: when a webhook is registered (an IP literal or a local name in the URL,
``host_refusal``) and at every delivery, on the addresses the host resolves to then (a name's DNS
may change after registration: ``address_kind``, used by ``api/webhooks/guarded.py``).
"""

from __future__ import annotations

import re
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

#: The environment variable (``Settings.webhook_allow_private``) that lets webhooks reach private addresses.
ALLOW_SETTING = "FACTORY_WEBHOOK_ALLOW_PRIVATE"

IPAddress = IPv4Address | IPv6Address

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".localdomain")
_CGNAT = IPv4Network("100.64.0.0/10")
_NAT64 = IPv6Network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are the IPv4 address
_LOCAL_NAT64 = IPv6Network("64:ff9b:1::/48")  # RFC 8215, local use
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")  # 127.1, 0x7f000001, 2130706433: forms inet_aton reads


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address (an IPv6 zone ``%eth0`` dropped; the legacy IPv4 forms a resolver
    accepts, such as ``127.1`` or ``2130706433``, read as it reads them), or None if it is a name."""
    text = text.strip().rstrip(".").lower().split("%", 1)[0]
    try:
        return ip_address(text)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(text):
        try:
            return IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` belongs to a private network (``"loopback"``, ``"link-local"``, …), or None
    when it is public."""
    if isinstance(address, IPv6Address):
        embedded = carried_ipv4(address)
        if embedded is not None:
            return address_kind(embedded)
        if address in _LOCAL_NAT64:
            return "local NAT64"
        if address.is_site_local:
            return "site-local"
    if address in _CGNAT:
        return "shared (CGNAT)"
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("special-purpose", not address.is_global),
    )
    return next((kind for kind, hit in kinds if hit), None)


def carried_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64's well-known prefix), if any."""
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is None and address in _NAT64:
        embedded = IPv4Address(int(address) & 0xFFFFFFFF)
    return embedded


def host_refusal(host: str) -> str | None:
    """Why a URL's host (a name or an IP literal, as ``urlsplit`` gives it) is in the factory's own
    network, said in a few words (``"127.0.0.1 is a loopback address"``), or None. A name is judged
    by itself only (no DNS lookup): where it resolves to is checked at each delivery."""
    address = parse_address(host)
    if address is not None:
        kind = address_kind(address)
        carried = carried_ipv4(address) if isinstance(address, IPv6Address) else None
        shown = f"{address} (that is {carried})" if carried else str(address)
        return None if kind is None else f"{shown} is {a_kind(kind)}"
    name = host.strip().rstrip(".").lower()
    if name == "localhost" or name.endswith(_LOCAL_SUFFIXES):
        return f"{name[:80]} is a local name"
    return None


def refusal_advice() -> str:
    """What to do about a refused address, the same wherever it is refused."""
    return (
        "webhooks may reach only public addresses; to send to the factory's own network (a receiver"
        f" on this host or the LAN), an admin sets {ALLOW_SETTING}=true"
    )


def a_kind(kind: str) -> str:
    """``"a loopback address"``, ``"an unspecified address"``: a kind from ``address_kind`` in words."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
