"""What a configured Ollama server has pulled, through the ``ollama`` client (confined here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from observability.redact import redact
from routing.config import Deployment, RoutingConfig


@dataclass
class OllamaServer:
    """One Ollama server: the models it has and the configured ones it lacks."""

    base: str
    models: list[dict[str, object]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # configured here, not pulled: `ollama pull NAME`
    error: str | None = None  # unreachable


def ollama_name(deployment: Deployment) -> str:
    return deployment.model.split("/", 1)[1]


def _pulled(name: str, have: set[str]) -> bool:
    """Ollama names a model ``name:tag``; a configured name without a tag means ``:latest``."""
    return name in have or (":" not in name and f"{name}:latest" in have)


async def ollama_servers(
    config: RoutingConfig, extra_base: str | None = None, *, timeout_s: float = 5.0
) -> list[OllamaServer]:
    """Every Ollama server the routing names (and ``extra_base``), with what each has pulled."""
    from ollama import AsyncClient

    wanted: dict[str, list[str]] = {}
    for chain in config.aliases.values():
        for d in chain:
            if d.ollama:
                wanted.setdefault(d.api_base or "http://127.0.0.1:11434", []).append(ollama_name(d))
    if extra_base:
        wanted.setdefault(extra_base.rstrip("/"), [])
    servers = []
    for base, names in wanted.items():
        server = OllamaServer(base=base)
        try:
            listing = await AsyncClient(host=base, timeout=timeout_s).list()
        except Exception as exc:  # unreachable, or not an Ollama server: said, not raised
            server.error = redact(f"{type(exc).__name__}: {exc}")[:300]
            server.missing = sorted(set(names))
            servers.append(server)
            continue
        for m in listing.models:
            server.models.append(
                {"name": m.model, "size": m.size, "modified_at": str(m.modified_at) if m.modified_at else None}
            )
        have = {str(m["name"]) for m in server.models}
        server.missing = sorted({n for n in names if not _pulled(n, have)})
        servers.append(server)
    return servers
