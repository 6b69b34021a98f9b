"""How large an audit search query may be.

PostgreSQL parses a full-text query into one tree; tens of thousands of words exceed its
expression depth (``StatementTooComplex``) long before any index helps, and no one searches
with a page of text. Every front door and every audit log applies the same bound.
"""

from __future__ import annotations

from factory.errors import InputError

MAX_QUERY_WORDS = 64
MAX_QUERY_BYTES = 1024


def bounded_query(query: str) -> str:
    """``query`` if it is within the bounds; ``InputError`` (exit 2) saying how to shorten it."""
    size = len(query.encode("utf-8", "surrogatepass"))
    if size > MAX_QUERY_BYTES:
        raise InputError(
            f"the search query is {size} bytes; at most {MAX_QUERY_BYTES} are searched: give a few distinctive words"
        )
    words = len(query.split())
    if words > MAX_QUERY_WORDS:
        raise InputError(
            f"the search query has {words} words; at most {MAX_QUERY_WORDS} are searched: give a few distinctive words"
        )
    return query
