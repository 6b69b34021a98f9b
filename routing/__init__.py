"""Model routing: aliases to deployments through LiteLLM (imported only on the first call)."""

from routing.base import (
    CHAT_ALIASES,
    EMBED_ALIAS,
    ChatModel,
    ChatRequest,
    ChatResponse,
    Embedder,
    Message,
    UsageLedger,
    UsageRecord,
)

__all__ = [
    "CHAT_ALIASES", "EMBED_ALIAS", "ChatModel", "ChatRequest", "ChatResponse", "Embedder", "Message",
    "UsageLedger", "UsageRecord",
]  # fmt: skip
