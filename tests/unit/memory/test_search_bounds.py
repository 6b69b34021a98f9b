"""Audit search queries are bounded before PostgreSQL parses them (issue 13, item 4)."""

from __future__ import annotations

import pytest

from factory.errors import InputError
from memory.audit_memory import InMemoryAuditLog
from memory.search_bounds import MAX_QUERY_BYTES, MAX_QUERY_WORDS, bounded_query


def test_queries_within_the_bounds_pass() -> None:
    query = " ".join(["word"] * MAX_QUERY_WORDS)
    assert bounded_query(query) == query


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        (" ".join(["w"] * (MAX_QUERY_WORDS + 1)), "words"),
        ("x" * (MAX_QUERY_BYTES + 1), "bytes"),
        ("é" * (MAX_QUERY_BYTES // 2 + 1), "bytes"),
        (" ".join(["w"] * 20_000), "bytes"),
    ],
)
def test_queries_beyond_the_bounds_are_input_errors(query: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        bounded_query(query)


async def test_the_in_memory_audit_applies_the_same_bound() -> None:
    with pytest.raises(InputError):
        await InMemoryAuditLog().search(" ".join(["w"] * (MAX_QUERY_WORDS + 1)))
