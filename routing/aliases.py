"""The routing layers and how they combine: built-in defaults at the bottom, each higher source
replacing the chains of the aliases it sets.

The defaults are today's: a cloud model when its key is set (OpenAI, then Anthropic), then Ollama
when a server is configured, then the embedded model, which always answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from routing.base import CHAT_ALIASES
from routing.config import (
    EMBEDDED,
    MINILM,
    SCRIPTED,
    Cooldown,
    Deployment,
    KeyRef,
    RoutingConfig,
    RoutingLayer,
    SourcedAlias,
)

_OPENAI = {
    "factory/architect": "openai/gpt-4o",
    "factory/coder": "openai/gpt-4o",
    "factory/fast": "openai/gpt-4o-mini",
    "factory/cheap": "openai/gpt-4o-mini",
}
_ANTHROPIC = {
    "factory/architect": "anthropic/claude-sonnet-4-5",
    "factory/coder": "anthropic/claude-sonnet-4-5",
    "factory/fast": "anthropic/claude-haiku-4-5",
    "factory/cheap": "anthropic/claude-haiku-4-5",
}
DEFAULT_OLLAMA_MODEL = "llama3.1"


def default_layer(
    *,
    openai_key: str | None = None,
    anthropic_key: str | None = None,
    ollama_base: str | None = None,
    ollama_model: str = DEFAULT_OLLAMA_MODEL,
    scripted: bool = False,
) -> RoutingLayer:
    """Every alias's default chain. ``openai_key``/``anthropic_key``: the environment variable that
    holds the key, when one is set."""
    if scripted:
        return RoutingLayer(aliases={alias: [Deployment(model=SCRIPTED)] for alias in CHAT_ALIASES})
    routes: dict[str, list[Deployment]] = {}
    for alias in CHAT_ALIASES:
        chain = []
        if openai_key:
            chain.append(Deployment(model=_OPENAI[alias], key=KeyRef(env=openai_key)))
        if anthropic_key:
            chain.append(Deployment(model=_ANTHROPIC[alias], key=KeyRef(env=anthropic_key)))
        if ollama_base:
            chain.append(Deployment(model=f"ollama_chat/{ollama_model}", api_base=ollama_base))
        chain.append(Deployment(model=EMBEDDED))
        routes[alias] = chain
    return RoutingLayer(aliases=routes, cooldown=Cooldown())  # type: ignore[arg-type]


def combine(
    layers: Sequence[tuple[str, RoutingLayer]], *, proxy: str | None = None, proxy_key: KeyRef | None = None
) -> tuple[RoutingConfig, list[SourcedAlias], str]:
    """The effective routing of ``layers`` (lowest first, each named by its source), which source
    set each alias, and which set the cooldown policy. With ``proxy``, every alias is one deployment:
    the same alias on that LiteLLM proxy."""
    chains: dict[str, tuple[str, list[Deployment]]] = {}
    cooldown, cooldown_source = Cooldown(), "default"
    for source, layer in layers:
        for alias, chain in layer.aliases.items():
            chains[alias] = (source, list(chain))
        if layer.cooldown is not None:
            cooldown, cooldown_source = layer.cooldown, source
    if proxy:  # the proxy serves the alias; an in-process tail (the embedded model) stays the last resort
        chains = {
            alias: (
                "proxy",
                [
                    Deployment(model=f"litellm_proxy/{alias}", api_base=proxy, key=proxy_key),
                    *[d for d in chains.get(alias, ("", []))[1] if d.local],
                ],
            )
            for alias in CHAT_ALIASES
        }
    missing = [a for a in CHAT_ALIASES if a not in chains]
    if missing:
        raise ValueError(f"no source sets {', '.join(missing)}")  # the default layer always does
    config = RoutingConfig(
        aliases={alias: chains[alias][1] for alias in CHAT_ALIASES},
        cooldown=cooldown,
        proxy=proxy,
    )
    sourced = [SourcedAlias(alias=alias, source=chains[alias][0], chain=chains[alias][1]) for alias in CHAT_ALIASES]
    return config, sourced, cooldown_source


def embedding_route() -> Deployment:
    """The one deployment of ``local/embed``. No fallback: vectors of two models do not mix."""
    return Deployment(model=MINILM)


def default_routing(**options: object) -> RoutingConfig:
    """The routing of the defaults alone (``default_layer``'s options): what tests and benches use."""
    return combine([("default", default_layer(**options))])[0]  # type: ignore[arg-type]
