"""Text every store and log can take: what PostgreSQL refuses, found or replaced before it is sent.

PostgreSQL stores no NUL character (``text`` refuses it, ``jsonb`` refuses even its ``\\u0000``
escape), and a lone UTF-16 surrogate (JSON ``"\\ud800"`` decodes to one) is not a character at all:
it cannot be encoded to UTF-8, so the driver fails before the statement is sent. Text a model or a
user produced is refused with ``unstorable``'s reason (invalid output, repaired like any other);
text the factory builds itself (error messages, ledger rows) is made safe with ``storable``.

This is the one leaf every package may import (DESIGN §3), so each shares the same rule.
"""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (its first NUL or lone surrogate), or ``None``."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return f"contains a NUL character (\\u0000) at position {found.start()}, which cannot be stored; remove it"
    return (
        f"contains a lone surrogate (\\u{ord(found.group()):04x}) at position {found.start()}, which is not a"
        " character; write the character itself (a JSON surrogate pair is fine) or remove it"
    )


def must_be_storable(text: str) -> str:
    """``text`` itself if PostgreSQL can store it, else ``ValueError`` saying what to remove (a
    pydantic validator: the message reaches the model that wrote the text)."""
    if problem := unstorable(text):
        raise ValueError(f"the text {problem}")
    return text


def storable(text: str) -> str:
    """``text`` with every NUL and lone surrogate replaced by U+FFFD (for texts the factory builds)."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable_data(value: Any, *, depth: int = 32) -> Any:
    """``storable`` applied to every string (keys included) of JSON-like data, ``depth`` levels deep."""
    if isinstance(value, str):
        return storable(value)
    if depth <= 0:
        return value
    if isinstance(value, dict):
        return {storable_data(k, depth=0): storable_data(v, depth=depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_data(v, depth=depth - 1) for v in value]
    return value
