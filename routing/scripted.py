"""A scripted, deterministic model for tests and benchmarks. Never a default: selected explicitly.

A script maps team slugs to queued answers; each answer is a JSON object (sent as JSON text) or a
raw string (sent as is, e.g. to test malformed output). A team with no queued answer gets a valid
COMPLETE result built from the request's schema, so any pipeline runs end to end (and for any other
schema, such as memory extraction's, a small valid instance of it). Streamed (free text), a team's
queued answer is sent as it is, else a short deterministic reply; word by word, its latency spread
over the words. ``"purposes"`` maps a request's purpose to queued answers, taken before the team's
(for calls made for no team: a group chat's speaker selection ``groupchat_select``, its summary
``groupchat_summary``). ``"embeddings": "hashed"`` makes ``local/embed`` answer from the script too
(vectors hashed from the text's words, no inference): for benchmarks of the factory's own work.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from routing.base import ChatRequest, ChatResponse
from routing.embedded import Completion
from routing.embeddings import DIMENSIONS
from routing.streaming import check_streamable

MODEL_NAME = "scripted/v1"


def _deliverables(schema: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The pinned deliverables of the result schema (or of the result branch when tools are offered)."""
    for branch in (schema or {}).get("anyOf", [schema or {}]):
        items = (branch.get("properties", {}).get("artifacts", {}) or {}).get("prefixItems", [])
        if items:
            return [(i["properties"]["name"]["const"], i["properties"]["kind"]["const"]) for i in items]
    return []


def complete_answer(request: ChatRequest) -> dict[str, Any]:
    """A valid COMPLETE result for whatever deliverables the request's schema pins."""
    prompt = request.messages[-1].content
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return {
        "status": "COMPLETE",
        "reasoning": f"Scripted answer for {request.team} (prompt {digest}).",
        "blockers": [],
        "assumptions_made": ["The requirement is complete as written."],
        "verified_facts": [f"The prompt had {len(prompt)} characters."],
        "clarification_needed": None,
        "artifacts": [
            {"name": name, "kind": kind, "content": f"# {name}\n\nScripted {kind} by {request.team}.\n"}
            for name, kind in _deliverables(request.json_schema)
        ],
        "confidence": 0.9,
    }


def schema_instance(schema: dict[str, Any], text: str) -> Any:
    """A small valid instance of a JSON schema (objects, arrays, strings, numbers, anyOf, const,
    enum), its strings built from ``text``: what a scripted model answers to a non-TaskResult schema
    (memory extraction, Q&A)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "anyOf" in schema:
        return schema_instance(schema["anyOf"][0], text)
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: schema_instance(sub, f"{text} {name}") for name, sub in properties.items()}
    if kind == "array":
        return [schema_instance(schema.get("items", {"type": "string"}), text)] if schema.get("maxItems", 1) else []
    if kind == "string":
        return text[: schema.get("maxLength", len(text))]
    if kind in ("number", "integer"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None


def scripted_answer(request: ChatRequest) -> Any:
    """A TaskResult for a team's objective; for any other schema, a small valid instance of it."""
    branches = (request.json_schema or {}).get("anyOf", [request.json_schema or {}])
    if request.json_schema and not any("status" in b.get("properties", {}) for b in branches):
        digest = hashlib.sha256(request.messages[-1].content.encode()).hexdigest()[:12]
        return schema_instance(request.json_schema, f"Scripted {request.purpose} for {request.team} ({digest}).")
    return complete_answer(request)


class ScriptedModel:
    """``ChatModel`` that answers from a script, instantly or after a fixed latency."""

    def __init__(self, script: dict[str, Any] | None = None, *, latency_s: float = 0.0) -> None:
        script = script or {}
        self._queues: dict[str, deque[Any]] = {
            team: deque(answers) for team, answers in (script.get("teams") or {}).items()
        }
        self._purposes: dict[str, deque[Any]] = {
            purpose: deque(answers) for purpose, answers in (script.get("purposes") or {}).items()
        }
        self._latency_s = float(script.get("latency_s", latency_s))
        self.hashed_embeddings = script.get("embeddings") == "hashed"

    @staticmethod
    def embed(texts: list[str]) -> list[list[float]]:
        """Unit-length vectors of ``DIMENSIONS`` hashed from each text's words: the same text gives the
        same vector, and texts sharing words lie closer (a cheap stand-in for real embeddings)."""
        vectors = []
        for text in texts:
            vector = [0.0] * DIMENSIONS
            for word in re.findall(r"\w+", text.lower()) or [""]:
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                vector[int.from_bytes(digest[:2], "big") % DIMENSIONS] += 1.0 if digest[2] & 1 else -1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vectors.append([v / norm for v in vector] if any(vector) else [1.0] + [0.0] * (DIMENSIONS - 1))
        return vectors

    @property
    def latency_s(self) -> float:
        return self._latency_s

    @classmethod
    def from_file(cls, path: Path) -> ScriptedModel:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def _queued(self, request: ChatRequest) -> str | None:
        """The purpose's next queued answer, else the team's, as text, if there is one."""
        queue = self._purposes.get(request.purpose) or self._queues.get(request.team or "")
        if not queue:
            return None
        answer = queue.popleft()
        return answer if isinstance(answer, str) else json.dumps(answer)

    @staticmethod
    def _counted(request: ChatRequest, text: str) -> Completion:
        """``text`` with token counts estimated at 4 characters a token."""
        tokens_in = sum(len(m.content) for m in request.messages) // 4
        return Completion(text=text, tokens_in=tokens_in, tokens_out=len(text) // 4)

    def answer(self, request: ChatRequest) -> Completion:
        """The next answer for the request's team, with token counts estimated at 4 characters a token."""
        text = self._queued(request)
        return self._counted(request, text if text is not None else json.dumps(scripted_answer(request)))

    async def stream(self, request: ChatRequest, *, timeout_s: float) -> AsyncIterator[str | ChatResponse]:
        """``StreamingChatModel``: the team's queued answer, else a short deterministic reply, word by
        word (each word after its share of ``latency_s``), then the whole as a ``ChatResponse``."""
        check_streamable(request)
        text = self._queued(request)
        if text is None:
            digest = hashlib.sha256(request.messages[-1].content.encode()).hexdigest()[:12]
            text = f"Scripted reply from {request.team or 'the factory'} to {request.purpose} {digest}: understood."
        words = [w for w in re.split(r"(?<=\s)(?=\S)", text) if w]
        pause = min(self._latency_s / max(1, len(words)), timeout_s)
        for word in words:
            if pause:
                await asyncio.sleep(pause)
            yield word
        done = self._counted(request, text)
        yield ChatResponse(
            text=text,
            alias=request.alias,
            model=MODEL_NAME,
            tokens_in=done.tokens_in,
            tokens_out=done.tokens_out,
            latency_ms=self._latency_s * 1000,
        )

    async def complete(self, request: ChatRequest, *, timeout_s: float) -> ChatResponse:
        if self._latency_s:
            await asyncio.sleep(min(self._latency_s, timeout_s))
        done = self.answer(request)
        return ChatResponse(
            text=done.text,
            alias=request.alias,
            model=MODEL_NAME,
            tokens_in=done.tokens_in,
            tokens_out=done.tokens_out,
            latency_ms=self._latency_s * 1000,
        )
