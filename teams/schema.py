"""The JSON schema a team's model must answer with, tightened per team.

The contract is ``TaskResult``; this schema is what the model is constrained to. For a small local
model it pins the artifact names and kinds to the team's deliverables and bounds every string,
so grammar-constrained decoding always ends in a complete, valid object within the token limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from teams.roster import Team
from teams.slugs import ALL_TEAMS
from teams.tools import MAX_WRITTEN


@dataclass(frozen=True)
class SchemaBounds:
    """Length limits that keep a model's answer inside its token budget."""

    reasoning_chars: int = 4000
    item_chars: int = 400
    list_items: int = 8
    content_chars: int = 20000
    #: Grammar decoding cannot bound a number's range, so a small model picks from tenths.
    confidence_steps: bool = False

    @classmethod
    def compact(cls) -> SchemaBounds:
        """For a small embedded model at ~90 tokens/s."""
        return cls(reasoning_chars=240, item_chars=100, list_items=2, content_chars=700, confidence_steps=True)


def _text(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_chars}


def _list(bounds: SchemaBounds) -> dict[str, Any]:
    return {"type": "array", "items": _text(bounds.item_chars), "maxItems": bounds.list_items}


def _call(tool: str, arguments: dict[str, Any], *, optional: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "tool": {"type": "string", "const": tool},
            "arguments": {
                "type": "object",
                "properties": arguments,
                "required": [name for name in arguments if name not in optional],
                "additionalProperties": False,
            },
        },
        "required": ["tool", "arguments"],
        "additionalProperties": False,
    }


def tool_call_schemas(team: Team, bounds: SchemaBounds, tools: Sequence[str]) -> list[dict[str, Any]]:
    """One schema per named tool (teams.tools): ``{"tool": NAME, "arguments": {...}}``."""
    others = [slug for slug in ALL_TEAMS if slug != team.slug]
    schemas = [
        _call("recall", {"query": {**_text(bounds.item_chars), "minLength": 1}}),
        _call(
            "write_artifact",
            {"name": {**_text(120), "minLength": 1}, "content": _text(bounds.content_chars)},
        ),
        _call(
            "check_files",
            {
                "names": {
                    "type": "array",
                    "items": {**_text(120), "minLength": 1},
                    "minItems": 1,
                    "maxItems": MAX_WRITTEN,
                }
            },
            optional=["names"],
        ),
        _call(
            "request_clarification",
            {
                "target_team": {"type": "string", "enum": others},
                "question": {**_text(bounds.item_chars * 2), "minLength": 1},
            },
        ),
    ]
    return [s for s in schemas if s["properties"]["tool"]["const"] in tools]


def response_schema(team: Team, bounds: SchemaBounds, *, tools: Sequence[str] = ()) -> dict[str, Any]:
    """The schema of one team's answer; a call of one of ``tools`` is allowed instead."""
    result = result_schema(team, bounds)
    if not tools:
        return result
    return {"anyOf": [*tool_call_schemas(team, bounds, tools), *result["anyOf"]]}


def result_schema(team: Team, bounds: SchemaBounds) -> dict[str, Any]:
    """The schema of one team's ``TaskResult``: ``status`` first, then the rest in contract order."""
    deliverables = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "const": d.name},
                "kind": {"type": "string", "const": d.kind},
                "content": _text(bounds.content_chars),
            },
            "required": ["name", "kind", "content"],
            "additionalProperties": False,
        }
        for d in team.produces
    ]
    others = [slug for slug in ALL_TEAMS if slug != team.slug]
    question = {
        "type": "object",
        "properties": {
            "target_team": {"type": "string", "enum": others},
            "question": {**_text(bounds.item_chars * 2), "minLength": 1},
        },
        "required": ["target_team", "question"],
        "additionalProperties": False,
    }
    reasons = {**_list(bounds), "items": {**_text(bounds.item_chars), "minLength": 1}, "minItems": 1}
    # One branch per status, so the grammar itself keeps TaskResult's rules: a question needs a
    # target, a blocked result needs a blocker (the status comes first and picks the branch).
    variants = {
        "COMPLETE": {"blockers": _list(bounds), "clarification_needed": {"type": "null"}},
        "NEEDS_CLARIFICATION": {"blockers": _list(bounds), "clarification_needed": question},
        "BLOCKED": {"blockers": reasons, "clarification_needed": {"type": "null"}},
    }
    return {"anyOf": [_result_variant(status, extra, deliverables, bounds) for status, extra in variants.items()]}


def _result_variant(
    status: str, extra: dict[str, Any], deliverables: list[dict[str, Any]], bounds: SchemaBounds
) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "status": {"type": "string", "const": status},
            "reasoning": _text(bounds.reasoning_chars),
            "blockers": extra["blockers"],
            "assumptions_made": _list(bounds),
            "verified_facts": _list(bounds),
            "clarification_needed": extra["clarification_needed"],
            "artifacts": {
                "type": "array",
                "prefixItems": deliverables,
                "items": False,
                "minItems": len(deliverables),
                "maxItems": len(deliverables),
            },
            "confidence": (
                {"enum": [round(i / 10, 1) for i in range(11)]}
                if bounds.confidence_steps
                else {"type": "number", "minimum": 0, "maximum": 1}
            ),
        },
        "required": [
            "status",
            "reasoning",
            "blockers",
            "assumptions_made",
            "verified_facts",
            "clarification_needed",
            "artifacts",
            "confidence",
        ],
        "additionalProperties": False,
    }
