"""Retention at the team boundary: what a finished stage leaves in memory.

After each COMPLETE stage the factory keeps: facts and decisions (in the team's bank and the shared
world), the artifacts in paragraph chunks (shared world), and a refreshed mental model of the team
(a short living summary). Facts, decisions and the summary come from an ``Extractor``: the
``factory/cheap`` model (``ModelExtractor``), or the result's own structured fields
(``StructuredExtractor``, no model call; the default on the embedded 135M model, whose summaries
are worse than the fields it already wrote).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from factory.errors import RoutingError
from memory.base import SHARED_BANK, MemoryKind, NewMemory
from observability.text import must_be_storable
from routing.base import ChatModel, ChatRequest, Message

log = logging.getLogger(__name__)

MENTAL_MODEL_CHARS = 1200
ITEM_CHARS = 400
MAX_ITEMS = 8


def chunks(text: str, size: int) -> list[str]:
    """Paragraph-aligned pieces of at most ``size`` characters."""
    pieces: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        while len(paragraph) > size:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(paragraph[:size])
            paragraph = paragraph[size:]
        if current and len(current) + len(paragraph) + 2 > size:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current.strip():
        pieces.append(current)
    return [c for c in pieces if c.strip()]


@dataclass(frozen=True)
class StageOutcome:
    """A finished stage, as memory sees it (plain data: memory does not import teams)."""

    team: str
    run_id: str
    goal: str
    reasoning: str
    verified_facts: Sequence[str]
    assumptions: Sequence[str]
    artifacts: Sequence[tuple[str, str]]  # (name, content)


@dataclass
class Extraction:
    facts: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    mental_model: str = ""


class Extractor(Protocol):
    async def extract(self, outcome: StageOutcome, previous_model: str | None) -> Extraction: ...


def _clean(texts: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for text in texts:
        text = " ".join(str(text).split())[:ITEM_CHARS]
        if text and text.lower() not in seen:
            seen.add(text.lower())
            kept.append(text)
    return kept[:MAX_ITEMS]


def structured_mental_model(team: str, previous: str | None, extraction: Extraction) -> str:
    """The previous summary's lines plus the new decisions and facts, newest first, bounded."""
    lines = [f"- {d}" for d in extraction.decisions] + [f"- {f}" for f in extraction.facts]
    old = [line for line in (previous or "").splitlines()[1:] if line.strip() and line not in lines]
    text = f"What {team} knows and decided (newest first):"
    for line in [*lines, *old]:
        if len(text) + len(line) + 1 > MENTAL_MODEL_CHARS:
            break
        text += "\n" + line
    return text


class StructuredExtractor:
    """Facts are the result's verified facts; decisions its assumptions and the gist of its reasoning."""

    async def extract(self, outcome: StageOutcome, previous_model: str | None) -> Extraction:
        gist = outcome.reasoning.strip().split("\n", 1)[0]
        extraction = Extraction(
            facts=_clean(outcome.verified_facts),
            decisions=_clean([*([gist] if gist else []), *outcome.assumptions]),
        )
        extraction.mental_model = structured_mental_model(outcome.team, previous_model, extraction)
        return extraction


_Text = Annotated[str, AfterValidator(must_be_storable)]


class _Extracted(BaseModel):
    """The extractor model's answer; text PostgreSQL cannot store makes it garbage (the fallback runs)."""

    facts: list[_Text] = Field(default_factory=list, max_length=MAX_ITEMS)
    decisions: list[_Text] = Field(default_factory=list, max_length=MAX_ITEMS)
    mental_model: _Text = Field(default="", max_length=MENTAL_MODEL_CHARS * 2)


_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "facts": {"type": "array", "items": {"type": "string", "maxLength": ITEM_CHARS}, "maxItems": MAX_ITEMS},
        "decisions": {"type": "array", "items": {"type": "string", "maxLength": ITEM_CHARS}, "maxItems": MAX_ITEMS},
        "mental_model": {"type": "string", "maxLength": MENTAL_MODEL_CHARS},
    },
    "required": ["facts", "decisions", "mental_model"],
    "additionalProperties": False,
}


class ModelExtractor:
    """One ``factory/cheap`` call per stage: facts, decisions and the refreshed mental model.

    Garbage output or a failed call falls back to ``StructuredExtractor`` (logged): retention never
    fails a stage.
    """

    def __init__(self, model: ChatModel, *, timeout_s: float, alias: str = "factory/cheap") -> None:
        self._model = model
        self._timeout_s = timeout_s
        self._alias = alias
        self._fallback = StructuredExtractor()

    async def extract(self, outcome: StageOutcome, previous_model: str | None) -> Extraction:
        material = "\n\n".join(f"--- {name} ---\n{content[:1500]}" for name, content in outcome.artifacts)[:6000]
        prompt = (
            f"The {outcome.team} team finished: {outcome.goal}\nIts reasoning: {outcome.reasoning[:1500]}\n"
            f"Its verified facts: {json.dumps(list(outcome.verified_facts)[:MAX_ITEMS])}\n"
            f"Its assumptions: {json.dumps(list(outcome.assumptions)[:MAX_ITEMS])}\n\n{material}\n\n"
            f"The team's summary so far: {previous_model or '(none yet)'}\n\n"
            "Extract the durable facts and the decisions taken (short sentences), and rewrite the team's"
            f" summary (at most {MENTAL_MODEL_CHARS} characters) to include them. Answer in JSON."
        )
        request = ChatRequest(
            alias=self._alias,  # type: ignore[arg-type]
            messages=[Message(role="user", content=prompt)],
            json_schema=_SCHEMA,
            max_tokens=800,
            run_id=outcome.run_id,
            team=outcome.team,
            purpose="memory",
        )
        try:
            response = await self._model.complete(request, timeout_s=self._timeout_s)
            data = _Extracted.model_validate_json(response.text)
        except (ValidationError, ValueError, TimeoutError, OSError, RoutingError) as exc:  # incl. a spent budget
            log.warning("memory extraction for %s fell back to the result's fields: %s", outcome.team, exc)
            return await self._fallback.extract(outcome, previous_model)
        extraction = Extraction(facts=_clean(data.facts), decisions=_clean(data.decisions))
        model_text = " ".join(data.mental_model.split())[:MENTAL_MODEL_CHARS]
        extraction.mental_model = model_text or structured_mental_model(outcome.team, previous_model, extraction)
        return extraction


def stage_memories(outcome: StageOutcome, extraction: Extraction, *, chunk_chars: int = 800) -> list[NewMemory]:
    """The items a finished stage leaves: facts and decisions in its bank and the shared world,
    artifact chunks in the shared world."""
    meta = {"team": outcome.team}
    items: list[NewMemory] = []
    for bank in (outcome.team, SHARED_BANK):
        items += [
            NewMemory(bank=bank, kind=MemoryKind.FACT, text=f, run_id=outcome.run_id, metadata=meta)
            for f in extraction.facts
        ]
        items += [
            NewMemory(bank=bank, kind=MemoryKind.DECISION, text=d, run_id=outcome.run_id, metadata=meta)
            for d in extraction.decisions
        ]
    for name, content in outcome.artifacts:
        for number, piece in enumerate(chunks(content, chunk_chars)):
            items.append(
                NewMemory(
                    bank=SHARED_BANK,
                    kind=MemoryKind.ARTIFACT,
                    text=piece,
                    run_id=outcome.run_id,
                    metadata={**meta, "artifact": name, "chunk": number},
                )
            )
    return items
