"""Project Q&A: answer a question about one run or the whole factory from memory, citing what it used.

Recall gathers items from every bank (or one run's items); the ``factory/cheap`` model answers from
them alone and names the numbers of the items it used. An answer that cites nothing it was given,
or a failed call, falls back to the best items themselves, so a question always gets the evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel, Field, ValidationError

from memory.base import SHARED_BANK, Recalled
from memory.gateway import MemoryGateway, TokenCount, approx_tokens
from routing.base import ChatModel, ChatRequest, Message

log = logging.getLogger(__name__)


class Citation(BaseModel):
    number: int
    item_id: int
    bank: str
    kind: str
    run_id: str | None
    source: str
    excerpt: str


class Answer(BaseModel):
    question: str
    text: str
    citations: list[Citation]
    answered_by: str  # the model, or "memory" when the evidence is returned as it is


class _ModelAnswer(BaseModel):
    answer: str = Field(min_length=1, max_length=4000)
    cited: list[int] = Field(default_factory=list, max_length=12)


_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "minLength": 1, "maxLength": 2000},
        "cited": {"type": "array", "items": {"type": "integer", "minimum": 1}, "maxItems": 12},
    },
    "required": ["answer", "cited"],
    "additionalProperties": False,
}


def _source(recalled: Recalled) -> str:
    meta = recalled.item.metadata
    return f"{meta.get('team', recalled.item.bank)}/{meta.get('artifact', recalled.item.kind.value)}"


class ProjectQA:
    """Questions about runs, answered from memory with citations."""

    def __init__(
        self,
        gateway: MemoryGateway,
        model: ChatModel,
        banks: Sequence[str],
        *,
        timeout_s: float,
        count: TokenCount = approx_tokens,
        budget_tokens: int = 1500,
    ) -> None:
        self._gateway = gateway
        self._model = model
        self._banks = [*banks, SHARED_BANK]
        self._timeout_s = timeout_s
        self._count = count
        self._budget = budget_tokens

    async def ask(self, question: str, *, run_id: str | None = None, limit: int = 8) -> Answer:
        question = question.strip()
        if not question:
            raise ValueError("the question is empty; ask about a run or the factory, e.g. 'which database?'")
        evidence = await self._gather(question, run_id, limit)
        if not evidence:
            scope = f"run {run_id}" if run_id else "the factory"
            return Answer(
                question=question,
                text=f"Memory holds nothing about this for {scope}.",
                citations=[],
                answered_by="memory",
            )
        citations = [
            Citation(
                number=n,
                item_id=r.item.id,
                bank=r.item.bank,
                kind=r.item.kind.value,
                run_id=r.item.run_id,
                source=_source(r),
                excerpt=r.item.text[:600],
            )
            for n, r in enumerate(evidence, start=1)
        ]
        numbered = "\n".join(f"[{c.number}] ({c.source}) {c.excerpt}" for c in citations)
        request = ChatRequest(
            alias="factory/cheap",
            messages=[
                Message(
                    role="user",
                    content=f"Answer the question from these notes only; cite the numbers you used.\n\n{numbered}"
                    f"\n\nQuestion: {question}",
                )
            ],
            json_schema=_SCHEMA,
            max_tokens=600,
            run_id=run_id,
            purpose="qa",
        )
        try:
            response = await self._model.complete(request, timeout_s=self._timeout_s)
            answer = _ModelAnswer.model_validate_json(response.text)
        except (ValidationError, ValueError, TimeoutError, OSError) as exc:
            log.warning("project Q&A fell back to the evidence itself: %s", exc)
            return self._evidence_only(question, citations)
        used = [c for c in citations if c.number in set(answer.cited)]
        if not used:  # an answer resting on nothing it was given is not trusted
            return self._evidence_only(question, citations)
        return Answer(question=question, text=answer.answer.strip(), citations=used, answered_by=response.model)

    async def _gather(self, question: str, run_id: str | None, limit: int) -> list[Recalled]:
        return await self._gateway.recall(
            SHARED_BANK,
            question,
            budget_tokens=self._budget,
            count=self._count,
            limit=limit,
            run_id=run_id,
            banks=self._banks,
        )

    @staticmethod
    def _evidence_only(question: str, citations: list[Citation]) -> Answer:
        best = citations[:3]
        text = "From memory: " + " ".join(f"[{c.number}] {c.excerpt[:200]}" for c in best)
        return Answer(question=question, text=text, citations=best, answered_by="memory")
