"""The tool registry (issue 19): the catalog of checks as data (``catalog.toml``) and the checks for
the tool ids a team declares.

A pattern in ``applies_to`` is an fnmatch glob with ``{a,b}`` alternatives; without a ``/`` it is
matched against the artifact's base name, with one against the whole relative name.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

from factory.errors import ConfigError, InputError
from verify.base import Check, Severity

CATALOG_PATH = Path(__file__).with_name("catalog.toml")
NEEDS = ("", "sandbox", "database")
_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``"*.{yaml,yml}"`` → ``["*.yaml", "*.yml"]`` (alternatives may repeat, never nest)."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [out for alt in match.group(1).split(",") for out in expand_braces(head + alt + tail)]


def matches(patterns: Sequence[str], artifact: str) -> bool:
    """Whether an artifact name matches one of the catalog's glob patterns."""
    base = PurePosixPath(artifact).name
    for pattern in patterns:
        for glob in expand_braces(pattern):
            if fnmatch.fnmatchcase(artifact if "/" in glob else base, glob):
                return True
    return False


@dataclass(frozen=True)
class ToolSpec:
    """One tool of the catalog (see the field notes at the top of ``catalog.toml``)."""

    id: str
    description: str
    inputs: tuple[str, ...]
    applies_to: tuple[str, ...]
    executes: bool
    needs: str
    severity: Severity
    security: bool
    available: bool = True
    note: str = ""

    def applies(self, artifact: str) -> bool:
        return matches(self.applies_to, artifact)

    def describe(self) -> dict[str, object]:
        """A JSON-ready description (``factory teams list``)."""
        return {
            "id": self.id,
            "description": self.description,
            "inputs": list(self.inputs),
            "applies_to": list(self.applies_to),
            "executes": self.executes,
            "needs": self.needs,
            "severity": self.severity.value,
            "security": self.security,
            "available": self.available,
            "note": self.note,
        }


def _spec(tool_id: str, raw: dict[str, object]) -> ToolSpec:
    try:
        spec = ToolSpec(
            id=tool_id,
            description=str(raw["description"]),
            inputs=tuple(str(i) for i in raw["inputs"]),  # type: ignore[attr-defined]
            applies_to=tuple(str(p) for p in raw["applies_to"]),  # type: ignore[attr-defined]
            executes=bool(raw["executes"]),
            needs=str(raw["needs"]),
            severity=Severity(str(raw["severity"])),
            security=bool(raw["security"]),
            available=bool(raw.get("available", True)),
            note=str(raw.get("note", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"tool {tool_id!r} in {CATALOG_PATH} is malformed ({exc}); fix the catalog") from exc
    if spec.needs not in NEEDS or (not spec.available and not spec.note):
        raise ConfigError(
            f"tool {tool_id!r} in {CATALOG_PATH}: needs must be one of {NEEDS}, an unavailable tool a note"
        )
    return spec


@cache
def catalog() -> dict[str, ToolSpec]:
    """Every tool of the catalog by id, in the catalog's order."""
    raw = tomllib.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    return {tool_id: _spec(tool_id, spec) for tool_id, spec in raw.items()}


def _known(tool_ids: Sequence[str]) -> list[ToolSpec]:
    tools = catalog()
    unknown = [t for t in tool_ids if t not in tools]
    if unknown:
        raise InputError(f"unknown tool(s) {', '.join(map(repr, unknown))}; known tools: {', '.join(tools)}")
    return [tools[t] for t in dict.fromkeys(tool_ids)]


def checks_for(tool_ids: Sequence[str]) -> list[Check]:
    """The checks for a team's declared tools, in the order given (duplicates once)."""
    from verify.checks import CHECK_TYPES  # the checks import the registry's matching

    return [CHECK_TYPES[spec.id](spec) for spec in _known(tool_ids)]


def describe(tool_ids: Sequence[str]) -> list[dict[str, object]]:
    """JSON-ready descriptions of a team's tools (``factory teams list``)."""
    return [spec.describe() for spec in _known(tool_ids)]
