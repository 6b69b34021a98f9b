"""The embedded embedding model, alone and through the LiteLLM alias local/embed."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from routing.aliases import default_routing
from routing.embeddings import DIMENSIONS, EmbeddedEmbedder
from routing.router import LiteLLMRouter

# float32 vectors of the reference model; regenerate with tests/data/make_minilm_reference.py
REFERENCE = Path(__file__).parents[2] / "data" / "minilm_reference.json"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def embedder() -> EmbeddedEmbedder:
    return EmbeddedEmbedder(batch_size=4)


def test_vectors_are_unit_length_384_dims_and_batch_independent(embedder: EmbeddedEmbedder) -> None:
    texts = ["short", "a much longer sentence about databases and indexes " * 3, "", "ünïcödé text"] * 2
    vectors = embedder.embed(texts)
    assert len(vectors) == len(texts) and all(len(v) == DIMENSIONS for v in vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vectors)
    alone = embedder.embed([texts[1]])[0]
    assert cosine(alone, vectors[1]) > 0.9999  # padding in a batch does not change a vector


def test_similar_meaning_is_closer_than_unrelated(embedder: EmbeddedEmbedder) -> None:
    query, near, far = embedder.embed(
        ["How do I reset my password?", "Steps to recover a forgotten login password", "The recipe needs two eggs"]
    )
    assert cosine(query, near) > 0.5 > cosine(query, far)


def test_vectors_match_the_float_reference_model(embedder: EmbeddedEmbedder) -> None:
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    sentences: list[str] = reference["sentences"]
    vectors = embedder.embed(sentences)
    cosines = [cosine(ours, theirs) for ours, theirs in zip(vectors, reference["vectors"], strict=True)]
    worst = min(range(len(cosines)), key=cosines.__getitem__)
    assert cosines[worst] >= 0.99, (
        f"int8 vs {reference['model']}: min cosine {cosines[worst]:.4f} on {sentences[worst][:60]!r}, "
        f"median {statistics.median(cosines):.4f}"
    )


def test_overlong_text_is_truncated_not_refused(embedder: EmbeddedEmbedder) -> None:
    [vector] = embedder.embed(["word " * 5000])
    assert len(vector) == DIMENSIONS


async def test_local_embed_alias_routes_through_litellm(embedder: EmbeddedEmbedder) -> None:
    router = LiteLLMRouter(default_routing(scripted=True), embedder=embedder)
    vectors = await router.embed(["hello world", "goodbye"], timeout_s=30)
    assert len(vectors) == 2 and len(vectors[0]) == DIMENSIONS
    assert cosine(vectors[0], embedder.embed(["hello world"])[0]) > 0.9999
    assert await router.embed([], timeout_s=30) == []


def test_its_threads_are_what_it_is_given() -> None:
    """With several workers on one machine each one's model gets its share of the cores
    (FACTORY_LOCAL_MODEL_THREADS), not every core."""
    one = EmbeddedEmbedder(threads=1)
    assert one.threads == 1 and len(one.embed(["a sentence"])[0]) == DIMENSIONS
    assert one._session.get_session_options().intra_op_num_threads == 1
