"""Before a server starts: refuse an address that is taken, with what to do (uvicorn would only log it)."""

from __future__ import annotations

import socket

from factory.errors import ConfigError


def port_free(host: str, port: int) -> None:
    """Refuse at once, with what to do, when the address is taken (uvicorn would only log it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}: {exc}; pass --host with an address of this machine") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"{host}:{port} is in use ({exc.strerror}); stop what listens there or pick another with --port"
            ) from exc
