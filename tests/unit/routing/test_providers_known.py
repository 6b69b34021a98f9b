"""The provider list routing validates against is the installed LiteLLM's (regenerate it with
``python -m routing.providers_known > routing/data/litellm_providers.txt`` after upgrading LiteLLM)."""

from __future__ import annotations

from routing.providers_known import installed_providers, litellm_providers


def test_the_shipped_provider_list_matches_the_installed_litellm() -> None:
    assert litellm_providers() == frozenset(installed_providers())
