"""Which deployments serve each alias: cloud first when a key is set, then Ollama, then embedded."""

from __future__ import annotations

from dataclasses import dataclass

from routing.base import CHAT_ALIASES

LOCAL_PROVIDER = "factory-local"
EMBEDDED = f"{LOCAL_PROVIDER}/smollm2"
SCRIPTED = f"{LOCAL_PROVIDER}/scripted"
MINILM = f"{LOCAL_PROVIDER}/minilm"

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


@dataclass(frozen=True)
class Deployment:
    """One concrete model behind an alias."""

    model: str  # LiteLLM model string, e.g. openai/gpt-4o or factory-local/smollm2
    api_base: str | None = None

    @property
    def local(self) -> bool:
        return self.model.startswith(f"{LOCAL_PROVIDER}/")

    @property
    def grammar(self) -> bool:
        """True when output is constrained by a grammar (then the schema is enforced, not asked)."""
        return self.model == EMBEDDED


def plan(
    *,
    openai: bool = False,
    anthropic: bool = False,
    ollama_base: str | None = None,
    ollama_model: str = "llama3.1",
    scripted: bool = False,
) -> dict[str, list[Deployment]]:
    """The ordered deployments of every chat alias for this configuration."""
    if scripted:
        return {alias: [Deployment(SCRIPTED)] for alias in CHAT_ALIASES}
    routes: dict[str, list[Deployment]] = {}
    for alias in CHAT_ALIASES:
        chain = []
        if openai:
            chain.append(Deployment(_OPENAI[alias]))
        if anthropic:
            chain.append(Deployment(_ANTHROPIC[alias]))
        if ollama_base:
            chain.append(Deployment(f"ollama_chat/{ollama_model}", api_base=ollama_base))
        chain.append(Deployment(EMBEDDED))
        routes[alias] = chain
    return routes


def embedding_route() -> Deployment:
    """The one deployment of ``local/embed``. No fallback: vectors of two models do not mix."""
    return Deployment(MINILM)
