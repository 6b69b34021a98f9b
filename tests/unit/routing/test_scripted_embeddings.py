"""The scripted model's hashed embeddings (``"embeddings": "hashed"``): benchmark stand-ins that still
behave like embeddings, and the router uses them only when the script asks."""

from __future__ import annotations

import math

from routing.embeddings import DIMENSIONS
from routing.router import LiteLLMRouter
from routing.scripted import ScriptedModel


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_hashed_vectors_are_unit_length_deterministic_and_closer_for_shared_words() -> None:
    a, b, c, empty = ScriptedModel.embed(["the url shortener", "a url shortener api", "billing invoices", ""])
    assert all(len(v) == DIMENSIONS and math.isclose(_cos(v, v), 1.0) for v in (a, b, c, empty))
    assert ScriptedModel.embed(["the url shortener"]) == [a]
    assert _cos(a, b) > _cos(a, c)


class _Refusing:
    def embed(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError("the real embedder must not be called")


class _Counting:
    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return [[1.0] + [0.0] * (DIMENSIONS - 1) for _ in texts]


def test_the_router_embeds_from_the_script_only_when_it_asks() -> None:
    from routing.aliases import default_layer
    from routing.config import RoutingConfig

    config = RoutingConfig(aliases=default_layer(scripted=True).aliases)
    hashed = LiteLLMRouter(config, scripted=ScriptedModel({"embeddings": "hashed"}), embedder=_Refusing())  # type: ignore[arg-type]
    assert hashed._embed_local(["x y"]) == ScriptedModel.embed(["x y"])
    real = _Counting()
    plain = LiteLLMRouter(config, scripted=ScriptedModel({}), embedder=real)  # type: ignore[arg-type]
    plain._embed_local(["x y"])
    assert real.calls == 1
