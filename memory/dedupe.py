"""Vector arithmetic shared by the stores: cosine similarity and near-duplicates within a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from memory.base import MERGEABLE, SEARCHABLE, NewMemory, Vector

Matrix = np.ndarray[Any, np.dtype[np.float32]]


def unit_rows(vectors: Sequence[Sequence[float]]) -> Matrix:
    """Vectors as rows of unit length (zero vectors stay zero)."""
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: Matrix = (matrix / np.clip(norms, 1e-12, None)).astype(np.float32)
    return unit


def checked(items: Sequence[NewMemory], vectors: Sequence[Vector]) -> list[Vector]:
    """The vectors to keep, one per item: ``None`` for kinds that are not ``SEARCHABLE``; a missing
    vector for a searchable item, or a count that does not match, is a ``ValueError``."""
    if len(items) != len(vectors):
        raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
    kept: list[Vector] = []
    for item, vector in zip(items, vectors, strict=True):
        if item.kind not in SEARCHABLE:
            kept.append(None)
        elif vector is None:
            raise ValueError(f"a {item.kind.value} item needs its vector")
        else:
            kept.append(vector)
    return kept


def dense(vectors: Sequence[Vector]) -> Matrix:
    """Unit rows, a row of zeros for each missing vector (similar to nothing)."""
    width = next((len(v) for v in vectors if v is not None), 1)
    return unit_rows([v if v is not None else [0.0] * width for v in vectors])


def within_batch(items: Sequence[NewMemory], vectors: Sequence[Vector], threshold: float) -> list[int]:
    """For each item, the position of the first item of the batch it duplicates (itself if none):
    same bank and ``MERGEABLE`` kind and cosine similarity at least ``threshold``."""
    if not items:
        return []
    unit = dense(vectors)
    similar = unit @ unit.T
    first = list(range(len(items)))
    for i in range(1, len(items)):
        if items[i].kind not in MERGEABLE:
            continue
        for j in range(i):
            if (
                first[j] == j
                and items[j].bank == items[i].bank
                and items[j].kind == items[i].kind
                and similar[i, j] >= threshold
            ):
                first[i] = j
                break
    return first
