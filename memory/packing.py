"""Context packing: what of memory goes into a stage's prompt, within a token budget.

The original objective (and requirement) is always in the prompt, whole; the packer fills what is
left of the budget with the team's mental model, then recalled items, best first. When a prompt
(an objective's growing buffer of tool rounds) would pass ``threshold`` of the model's context
window, ``compact`` retains the batch, consolidates it, refreshes the mental model and returns the
short note that replaces the truncated buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from memory.base import MemoryKind, NewMemory, Recalled
from memory.gateway import MemoryGateway, TokenCount, approx_tokens
from memory.retention import Extraction, structured_mental_model
from observability.text import storable

THRESHOLD = 0.8


@dataclass(frozen=True)
class PackedContext:
    """The memory part of a prompt."""

    text: str
    tokens: int
    mental_model: str | None = None
    recalled: list[Recalled] = field(default_factory=list)


def _label(recalled: Recalled) -> str:
    item = recalled.item
    team = item.metadata.get("team") or item.bank
    name = item.metadata.get("artifact")
    return f"{name} (from {team})" if name else f"{item.kind.value} (from {team})"


async def pack(
    gateway: MemoryGateway,
    team: str,
    query: str,
    *,
    budget_tokens: int,
    count: TokenCount = approx_tokens,
    run_id: str | None = None,
    limit: int = 12,
) -> PackedContext:
    """The mental model, then recall for ``query``, within ``budget_tokens`` (the objective is not
    part of this budget: the caller always sends it whole)."""
    if budget_tokens <= 0:
        return PackedContext(text="", tokens=0)
    model = await gateway.mental_model(team)
    parts: list[str] = []
    used = 0
    if model:
        block = f"What your team knows so far:\n{model}\n"
        cost = count(block)
        if cost <= budget_tokens // 3:
            parts.append(block)
            used += cost
    header = "Relevant memory (earlier teams' artifacts, facts and decisions):\n"
    budget_left = budget_tokens - used - count(header)
    recalled = await gateway.recall(
        team, query, budget_tokens=budget_left, count=_framed(count), limit=limit, run_id=run_id
    )
    if recalled:
        parts.append(header + "".join(f"--- {_label(r)} ---\n{r.item.text}\n" for r in recalled))
    text = "\n".join(parts) + ("\n" if parts else "")
    return PackedContext(text=text, tokens=count(text) if text else 0, mental_model=model, recalled=recalled)


def _framed(count: TokenCount) -> TokenCount:
    """Counts an item with the label line packing puts around it."""
    return lambda text: count(text) + 12


def over_threshold(texts: Sequence[str], window_tokens: int, count: TokenCount, threshold: float = THRESHOLD) -> bool:
    return sum(count(t) for t in texts) > threshold * window_tokens


async def compact(
    gateway: MemoryGateway, team: str, run_id: str | None, batch: Sequence[str], *, note_chars: int = 1500
) -> str:
    """Retain the batch → consolidate → refresh the mental model → the note that replaces the batch."""
    # Transcripts quote raw model output: what PostgreSQL cannot store (and pydantic refuses, for a
    # lone surrogate) is replaced before an item is made of it.
    kept = [storable(t.strip()) for t in batch if t.strip()]
    if not kept:
        return ""
    await gateway.retain(
        [NewMemory(bank=team, kind=MemoryKind.TRANSCRIPT, text=t[:20_000], run_id=run_id) for t in kept]
    )
    lines: list[str] = []
    for text in kept:  # consolidate: each message's first line, duplicates once, newest last
        line = " ".join(text.split("\n", 1)[0].split())[:300]
        if line and line not in lines:
            lines.append(line)
    note = "Earlier in this objective (consolidated; the full text is in memory):\n"
    for line in reversed(lines):
        if len(note) + len(line) + 3 > note_chars:
            break
        note += f"- {line}\n"
    previous = await gateway.mental_model(team)
    refreshed = structured_mental_model(team, previous, Extraction(facts=lines[-4:]))
    await gateway.set_mental_model(team, refreshed, run_id=run_id)
    return note
