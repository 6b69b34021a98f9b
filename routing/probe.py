"""``factory routing test``: one tiny real call to one deployment alone — reachable, latency, and
whether the structured output asked for came back."""

from __future__ import annotations

import json
import time
from typing import Any

from observability.redact import redact
from observability.text import storable
from routing.base import ChatRequest, Message
from routing.config import Deployment
from routing.failures import kind_of
from routing.router import LiteLLMRouter

PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


async def probe(router: LiteLLMRouter, deployment: Deployment, *, timeout_s: float) -> dict[str, Any]:
    """One tiny real call to ``deployment`` alone: reachable, latency, structured output accepted."""
    request = ChatRequest(
        alias="factory/fast",
        messages=[
            Message(role="system", content="You answer connectivity checks with JSON only."),
            Message(role="user", content='Answer exactly {"ok": true}'),
        ],
        json_schema=PROBE_SCHEMA,
        max_tokens=24,
        temperature=0.0,
        purpose="routing.test",
    )
    result: dict[str, Any] = {"deployment": deployment.id, "mode": None}
    started = time.perf_counter()
    try:
        litellm = await router.ready()
        result["mode"] = router.mode(deployment)
        response = await router.call(litellm, deployment, request, timeout_s)
    except Exception as exc:
        kind, _ = kind_of(exc)
        reachable = kind not in ("connection", "timeout", "no_key")
        return result | {
            "reachable": reachable, "ok": False, "kind": kind, "error": redact(storable(str(exc)))[:300],
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }  # fmt: skip
    try:
        answer = json.loads(response.text)
        structured = isinstance(answer, dict) and isinstance(answer.get("ok"), bool)
    except json.JSONDecodeError:
        structured = False
    return result | {
        "reachable": True,
        "ok": structured,
        "structured": structured,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "tokens_in": response.tokens_in,
        "tokens_out": response.tokens_out,
        "cost_usd": response.cost_usd,
        **({} if structured else {"error": f"the answer is not the requested JSON: {response.text[:120]!r}"}),
    }
