"""Vector arithmetic shared by the stores: cosine similarity and near-duplicates within a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from memory.base import MERGEABLE, NewMemory

Matrix = np.ndarray[Any, np.dtype[np.float32]]


def unit_rows(vectors: Sequence[Sequence[float]]) -> Matrix:
    """Vectors as rows of unit length (zero vectors stay zero)."""
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: Matrix = (matrix / np.clip(norms, 1e-12, None)).astype(np.float32)
    return unit


def within_batch(items: Sequence[NewMemory], vectors: Sequence[Sequence[float]], threshold: float) -> list[int]:
    """For each item, the position of the first item of the batch it duplicates (itself if none):
    same bank and ``MERGEABLE`` kind and cosine similarity at least ``threshold``."""
    if not items:
        return []
    unit = unit_rows(vectors)
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
