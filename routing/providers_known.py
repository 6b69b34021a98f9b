"""The providers a deployment may name: LiteLLM's, plus the factory's in-process one.

LiteLLM's list is read from ``data/litellm_providers.txt``, written from the installed LiteLLM
(``python -m routing.providers_known > routing/data/litellm_providers.txt``; a test checks it still
matches), so validating a routing change does not import LiteLLM, which takes seconds.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

LOCAL_PROVIDER = "factory-local"
PROVIDERS_FILE = Path(__file__).with_name("data") / "litellm_providers.txt"


@cache
def litellm_providers() -> frozenset[str]:
    return frozenset(line.strip() for line in PROVIDERS_FILE.read_text(encoding="utf-8").splitlines() if line.strip())


def known_provider(name: str) -> bool:
    return name == LOCAL_PROVIDER or name in litellm_providers()


def installed_providers() -> list[str]:
    """The providers of the installed LiteLLM (imports it)."""
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network
    from litellm.types.utils import LlmProviders

    return sorted(p.value for p in LlmProviders)


if __name__ == "__main__":
    print("\n".join(installed_providers()))  # noqa: T201
