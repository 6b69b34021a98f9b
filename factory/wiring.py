"""The composition root: build every service once, pass them explicitly, close what was opened."""

from __future__ import annotations

import logging
import select
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, OperationalError
from psycopg.errors import FeatureNotSupported
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.base import BrokerLimits
from broker.redis_streams import RedisBroker
from broker.responders import responding
from factory import services
from factory.errors import ServiceUnavailable
from factory.migrations import migrate
from factory.policy import PolicyService, budget_limits
from factory.routing_service import RoutingKeys, RoutingService
from factory.routing_store_pg import PostgresRoutingStore
from factory.secrets_pg import PostgresSecretStore
from factory.service_errors import safe_url, service_error
from factory.settings import Settings
from factory.verification import verifier
from hitl.base import EscalationKind, EscalationStatus, Priority
from hitl.desk import DecisionDesk, LowRisk
from hitl.postgres import PostgresEscalationQueue
from hitl.sla import SlaPolicy
from memory.audit_pg import PostgresAuditLog
from memory.bank_pg import PgVectorMemoryStore
from memory.chain import canonical
from memory.gateway import MemoryGateway, approx_tokens
from memory.qa import ProjectQA
from memory.retention import Extractor, ModelExtractor, StructuredExtractor
from observability.base import Event, EventSink, Instrument, ModelCall
from observability.events import FanOut, LocalEventBus
from observability.metrics import Metrics
from observability.redis_stream import RedisEventStream, StreamGroupReader
from observability.tracing import RunTracer, langfuse_tracer
from routing.base import ChatModel, ChatRequest, ChatResponse, Embedder, Fallback, RoutedChatModel, UsageRecord
from routing.budget import BudgetedModel, BudgetLimits
from routing.config import RoutingConfig
from routing.cooldowns import Cooldowns
from routing.embedded import EmbeddedModel
from routing.embeddings import EmbeddedEmbedder
from routing.ledger import ObservedLedger, OnFallback, RecordingModel
from routing.router import LiteLLMRouter
from routing.scripted import ScriptedModel
from routing.secrets import SecretBox, SecretStore
from teams.clarify import TeamAnswerer
from teams.gate import GateLimits
from teams.pipeline import PipelineDeps, PipelineEngine
from teams.runner import TeamRunner
from teams.schema import SchemaBounds
from teams.slugs import ALL_TEAMS, TeamSlug
from teams.stage_memory import StageMemory
from teams.store_pg import PostgresRunStore

if TYPE_CHECKING:
    from api.webhooks import Webhooks
    from teams.groupchat import GroupChats

log = logging.getLogger(__name__)


def responders_for_run(settings: Settings) -> tuple[TeamSlug, ...]:
    """The teams a process driving a run serves itself: all of them unless configured off."""
    return ALL_TEAMS if settings.clarify_responders else ()


def broker_limits(settings: Settings) -> BrokerLimits:
    return BrokerLimits(
        max_per_objective=settings.clarify_max_per_objective,
        max_depth=settings.clarify_max_depth,
        reply_timeout_s=settings.clarify_reply_timeout_s,
        reply_ttl_s=settings.clarify_reply_ttl_s,
        claim_idle_s=settings.clarify_claim_idle_s,
        stream_maxlen=settings.clarify_stream_maxlen,
    )


def sla_policy(settings: Settings) -> SlaPolicy:
    hours = {
        Priority.CRITICAL: settings.sla_hours_critical,
        Priority.HIGH: settings.sla_hours_high,
        Priority.MEDIUM: settings.sla_hours_medium,
        Priority.LOW: settings.sla_hours_low,
    }
    return SlaPolicy(
        deadlines={p: timedelta(hours=h) for p, h in hours.items()},
        final_after_breach=timedelta(hours=settings.sla_final_after_breach_hours),
        auto_approve_low=settings.sla_auto_approve_low,
    )


def low_risk(settings: Settings) -> LowRisk:
    return LowRisk(
        kinds=frozenset(EscalationKind(k) for k in settings.hitl_low_risk_kinds.split(",") if k),
        priorities=frozenset(Priority(p) for p in settings.hitl_low_risk_priorities.split(",") if p),
    )


def _budgeted(
    model: ChatModel, ledger: PostgresRunStore, escalations: PostgresEscalationQueue, settings: Settings
) -> BudgetedModel:
    """Budgets per run: what the run's recorded policy sets (the chat's settings panel), else the
    settings'. A run's policy never changes, so its limits are read once."""
    known: dict[str, BudgetLimits] = {}

    async def limits(run_id: str) -> BudgetLimits:
        if run_id not in known:
            run = await ledger.get_run(run_id)
            if len(known) > 1000:
                known.clear()
            known[run_id] = budget_limits(run.policy if run is not None else None, settings)
        return known[run_id]

    async def grants(run_id: str) -> int:
        return sum(
            e.kind is EscalationKind.BUDGET and e.status is EscalationStatus.APPROVED
            for e in await escalations.for_run(run_id)
        )

    return BudgetedModel(model, ledger, limits, grants)


def _fallback_events(events: EventSink) -> OnFallback:
    """A run's model call that fell back is a ``model.fallback`` live event as it happens: which
    deployments failed and why, and which answered (None: none did)."""

    async def emit(request: ChatRequest, response: ChatResponse | None, hops: list[Fallback]) -> None:
        if request.run_id is None:
            return
        data = {
            "team": request.team, "alias": request.alias, "purpose": request.purpose,
            "answered": response.model if response is not None else None,
            "failed": [h.model_dump(mode="json") for h in hops],
        }  # fmt: skip
        await events.emit(Event(type="model.fallback", run_id=request.run_id, data=data, at=datetime.now(UTC)))

    return emit


def _window(settings: Settings, routing: RoutingConfig) -> int:
    """The context window prompts are packed for: the smallest one the coder chain's routed
    deployments declare (``context_window``), else ``FACTORY_CONTEXT_WINDOW_TOKENS``."""
    declared = [d.context_window for d in routing.chain("factory/coder") if d.context_window and not d.local]
    return min([settings.context_window_tokens, *declared]) if declared else settings.context_window_tokens


def _extractor(settings: Settings, model: ChatModel, compact: bool) -> Extractor:
    """Facts, decisions and mental models from ``factory/cheap``, or from the result's own fields on
    the embedded 135M model (``auto``), whose summaries add nothing and cost a call per stage."""
    if settings.memory_extraction == "structured" or (settings.memory_extraction == "auto" and compact):
        return StructuredExtractor()
    return ModelExtractor(model, timeout_s=settings.model_timeout_s)


def instruments(settings: Settings) -> list[Instrument]:
    """What watches this process for operators (metrics, traces), from the settings; each sees every
    live event and every model call."""
    watching: list[Instrument] = [Metrics(teams=ALL_TEAMS)]  # always: metrics cost nothing on the network
    keys = (settings.langfuse_public_key, settings.langfuse_secret_key)
    public, secret = (k.get_secret_value().strip() if k else "" for k in keys)
    if public and secret:  # both keys, else no tracer and nothing is ever sent
        watching.append(langfuse_tracer(public_key=public, secret_key=secret, base_url=settings.langfuse_base_url))
    return watching


def _observer(instruments: Sequence[Instrument]) -> Callable[[UsageRecord], None]:
    def observe(usage: UsageRecord) -> None:
        call = ModelCall(
            **usage.model_dump(exclude={"created_at", "fallbacks"}),
            fallbacks=[f.deployment for f in usage.fallbacks],
            ended_at=usage.created_at,
        )
        for instrument in instruments:
            instrument.model_call(call)

    return observe


@dataclass(frozen=True)
class Factory:
    """Every service of one process, built once."""

    settings: Settings
    endpoints: services.Endpoints
    pool: AsyncConnectionPool
    redis: Redis
    store: PostgresRunStore
    audit: PostgresAuditLog
    escalations: PostgresEscalationQueue
    desk: DecisionDesk
    bus: LocalEventBus
    stream: RedisEventStream
    engine: PipelineEngine
    broker: RedisBroker
    answerer: TeamAnswerer
    memory: StageMemory
    qa: ProjectQA
    model_description: str
    secrets: SecretStore
    routing: RoutingService
    router: LiteLLMRouter | None  # None when a model was handed in (tests)
    policy: PolicyService
    #: The model chain every team call goes through (budgets, usage ledger, routing): ``complete`` and ``stream``.
    model: RoutedChatModel
    #: What watches this process (``instruments(settings)``): metrics, traces.
    instruments: tuple[Instrument, ...] = ()


#: Autocommit: each store call is one round trip; multi-statement work opens a transaction. No
#: server-side prepared statements: through PgBouncer in transaction mode (compose.yaml) consecutive
#: statements may reach different server connections, where a statement prepared on one is unknown.
CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}


async def _still_open(conn: AsyncConnection[Any]) -> None:
    """The pool's check of a connection it hands out. An idle connection has nothing to read unless
    its server ended it (a restart, ``pg_terminate_backend``): only then is it probed with a round
    trip, which fails, and the pool hands out a fresh one. A healthy connection costs one poll."""
    poller = select.poll()  # not select.select: it cannot watch a descriptor numbered 1024 or more
    poller.register(conn.pgconn.socket, select.POLLIN)
    if poller.poll(0):
        await conn.execute("")


async def _open_pool(url: str, timeout_s: float) -> AsyncConnectionPool:
    try:
        async with await AsyncConnection.connect(url, connect_timeout=max(1, int(timeout_s))) as conn:
            await migrate(conn)
    except FeatureNotSupported as exc:
        raise ServiceUnavailable(
            f"PostgreSQL at {safe_url(url)} cannot enable pgvector ({exc}); install pgvector 0.8+ there,"
            " or unset FACTORY_DATABASE_URL to use the embedded PostgreSQL, which ships it"
        ) from exc
    except OperationalError as exc:
        raise ServiceUnavailable(
            f"PostgreSQL at {safe_url(url)} is unreachable ({str(exc).strip().splitlines()[0]});"
            " start it, fix FACTORY_DATABASE_URL, or unset it to use the embedded database"
        ) from exc
    pool = AsyncConnectionPool(
        url, min_size=1, max_size=8, open=False, timeout=timeout_s, kwargs=CONNECTION_KWARGS, check=_still_open
    )
    await pool.open(wait=True, timeout=timeout_s)
    return pool


async def open_redis(url: str, timeout_s: float) -> Redis:
    redis = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await redis.ping()  # type: ignore[misc]  # redis-py types ping() for sync and async
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise ServiceUnavailable(
            f"Redis at {safe_url(url)} is unreachable ({exc}); start it, fix FACTORY_REDIS_URL,"
            " or unset it to use the embedded Redis"
        ) from exc
    return redis


async def build_model(
    settings: Settings, routing: RoutingService, keys: RoutingKeys, store: PostgresRunStore
) -> tuple[LiteLLMRouter, bool, str, EmbeddedModel]:
    """The chat model for this configuration: (router, grammar-constrained first?, description, embedded).

    New runs take the current routing (reread from the store), a run's calls the routing it started with."""
    config = await routing.current()
    scripted = ScriptedModel.from_file(settings.scripted_model) if settings.scripted_model is not None else None
    embedded = EmbeddedModel(  # loaded on its first call only
        n_ctx=settings.local_model_ctx, n_threads=settings.local_model_threads, seed=settings.local_model_seed
    )

    async def run_routing(run_id: str) -> RoutingConfig | None:
        run = await store.get_run(run_id)
        if run is None or not run.routing:
            return None
        try:
            return RoutingConfig.model_validate(run.routing)
        except ValidationError as exc:  # recorded under rules since made stricter: the current routing serves
            log.warning("run %s's recorded routing no longer validates (%s); it uses the current routing", run_id,
                        exc.errors()[0]["msg"])  # fmt: skip
            return None

    router = LiteLLMRouter(
        config,
        current=routing.current,
        run_routing=run_routing,
        keys=keys,
        cooldowns=Cooldowns(on_cool=routing.cooled, on_clear=routing.recovered),
        embedded=embedded,
        embedder=EmbeddedEmbedder(threads=settings.local_model_threads),  # loaded on its first call only
        scripted=scripted,
        local_max_tokens=settings.local_max_tokens,
    )
    chain = config.chain("factory/coder")
    description = " -> ".join(d.id for d in chain) + (" (scripted: test only)" if scripted is not None else "")
    return router, chain[0].grammar, description, embedded


@asynccontextmanager
async def _closing(stream: RedisEventStream, watching: Sequence[Instrument] = ()) -> AsyncIterator[None]:
    """Publishes the live events still queued when the block ends, then the traces (bounded waits)."""
    try:
        yield
    finally:
        await stream.aclose()
        for instrument in watching:
            if isinstance(instrument, RunTracer):
                await instrument.aclose()


@asynccontextmanager
async def open_factory(
    settings: Settings,
    *,
    model: ChatModel | None = None,
    serve: Sequence[TeamSlug] = (),
    embedder: Embedder | None = None,
) -> AsyncIterator[Factory]:
    """Start or reach the services, migrate, and wire the engine; close everything on exit.

    ``serve``: teams whose clarification requests this process answers while the block runs. A
    PostgreSQL or Redis driver error escaping the block (the service died mid-command) comes out
    as ``ServiceUnavailable`` naming the service.
    """
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    endpoints = services.ensure(settings.data_dir, database_url, redis_url, timeout_s=settings.service_start_timeout_s)
    try:
        async with _wired(settings, endpoints, model, serve, embedder) as factory:
            yield factory
    except Exception as exc:
        embedded = {"PostgreSQL"} if endpoints.embedded_database else set()
        embedded |= {"Redis"} if endpoints.embedded_redis else set()
        wrapped = service_error(
            exc, database_url=endpoints.database_url, redis_url=endpoints.redis_url, embedded=frozenset(embedded)
        )
        if wrapped is None:
            raise
        raise wrapped from exc


@asynccontextmanager
async def _wired(
    settings: Settings,
    endpoints: services.Endpoints,
    model: ChatModel | None,
    serve: Sequence[TeamSlug],
    embedder: Embedder | None,
) -> AsyncIterator[Factory]:
    pool = await _open_pool(endpoints.database_url, settings.connect_timeout_s)
    embedded = None
    try:
        redis = await open_redis(endpoints.redis_url, settings.connect_timeout_s)
        try:
            store = PostgresRunStore(pool, lease_ttl_s=settings.run_lease_ttl_s)
            # the key is loaded when a secret is first sealed or opened
            secrets = PostgresSecretStore(
                pool, lambda create: SecretBox.load(settings.data_dir, settings.secret_key, create=create)
            )
            keys = RoutingKeys(secrets)
            routing = RoutingService(
                settings, PostgresRoutingStore(pool), keys, redis=redis, prefix=settings.redis_prefix
            )
            if model is None:
                model, compact, description, embedded = await build_model(settings, routing, keys, store)
            else:
                compact, description = False, type(model).__name__
            if embedder is None:  # embeddings go through the local/embed alias of a router
                embedder = model if isinstance(model, LiteLLMRouter) else LiteLLMRouter(await routing.current())
            count = embedded.count_tokens if embedded is not None else approx_tokens
            window = settings.local_model_ctx if compact else _window(settings, await routing.current())
            bus = LocalEventBus()
            stream = RedisEventStream(redis, prefix=settings.redis_prefix)
            escalations = PostgresEscalationQueue(pool, canonical=canonical)  # decisions audited atomically
            watching = instruments(settings)
            events = FanOut([bus, stream, *watching])
            ledger = ObservedLedger(store, _observer(watching)) if watching else store
            recorded = _budgeted(
                RecordingModel(model, ledger, on_fallback=_fallback_events(events)), store, escalations, settings
            )
            runner = TeamRunner(
                recorded,
                timeout_s=settings.model_timeout_s,
                max_tokens=settings.local_max_tokens if compact else 4096,
                bounds=SchemaBounds.compact() if compact else SchemaBounds(),
                budget_chars=min(settings.context_budget_chars, 2400) if compact else settings.context_budget_chars,
                tool_rounds=min(settings.tool_rounds, settings.local_tool_rounds) if compact else settings.tool_rounds,
                window_tokens=window,
                count=count,
            )
            memory = StageMemory(
                gateway=MemoryGateway(
                    PgVectorMemoryStore(pool),
                    embedder,
                    timeout_s=settings.model_timeout_s,
                    dedupe_at=settings.memory_dedupe_at,
                ),
                extractor=_extractor(settings, recorded, compact),
                count=count,
                budget_tokens=min(settings.memory_budget_tokens, 600) if compact else settings.memory_budget_tokens,
                window_tokens=window,
            )
            broker = RedisBroker(redis, prefix=settings.redis_prefix, limits=broker_limits(settings))
            policy = PolicyService(settings, pool)
            audit = PostgresAuditLog(pool)
            sla = sla_policy(settings)
            engine = PipelineEngine(
                PipelineDeps(
                    store=store,
                    audit=audit,
                    escalations=escalations,
                    runner=runner,
                    events=events,
                    limits=GateLimits(
                        confidence_floor=settings.confidence_floor,
                        retry_budget=settings.retry_budget,
                        iteration_cap=settings.iteration_cap,
                        check_revisions=settings.check_revisions,
                    ),
                    runs_dir=settings.runs_dir,
                    max_requirement_bytes=settings.max_requirement_bytes,
                    broker=broker,
                    memory=memory,
                    sla=sla,
                    routing=routing.public,
                    policy=policy.current,
                    verifier=verifier(settings, endpoints.database_url),
                )
            )
            answerer = TeamAnswerer(runner, store, broker)
            async with responding(broker, answerer, serve), _closing(stream, watching):
                yield Factory(
                    settings=settings,
                    endpoints=endpoints,
                    pool=pool,
                    redis=redis,
                    store=store,
                    audit=audit,
                    escalations=escalations,
                    desk=DecisionDesk(escalations, audit, events, policy=sla, low_risk=low_risk(settings)),
                    bus=bus,
                    stream=stream,
                    engine=engine,
                    broker=broker,
                    answerer=answerer,
                    memory=memory,
                    qa=ProjectQA(memory.gateway, recorded, ALL_TEAMS, timeout_s=settings.model_timeout_s, count=count),
                    model_description=description,
                    secrets=secrets,
                    routing=routing,
                    router=model if isinstance(model, LiteLLMRouter) else None,
                    policy=policy,
                    model=recorded,
                    instruments=tuple(watching),
                )
        finally:
            await redis.aclose()
    finally:
        await pool.close()
        if embedded is not None:
            embedded.close()


def group_chats(factory: Factory, *, model: RoutedChatModel | None = None, poll_s: float = 0.5) -> GroupChats:
    """The group-chat service (teams/groupchat) on this factory's services: its model chain (``model``:
    one wrapping it, as a test's spy), PostgreSQL, memory, audit, live events and pipeline engine.
    Cheap to build: front doors call it when they need it. AutoGen is imported on the first call."""
    from teams.groupchat import GroupChatDeps, GroupChats, GroupChatStore

    deps = GroupChatDeps(
        model=model or factory.model,
        store=GroupChatStore(factory.pool),
        leases=factory.store,
        gateway=factory.memory.gateway,
        audit=factory.audit,
        events=FanOut([factory.bus, factory.stream, *factory.instruments]),  # as a run's: watched too
        engine=factory.engine,
        timeout_s=factory.settings.model_timeout_s,
        poll_s=poll_s,
        window_tokens=factory.settings.context_window_tokens,
    )
    return GroupChats(deps)


def webhook_events(factory: Factory, *, consumer: str | None = None, claim_idle_s: float = 30.0) -> StreamGroupReader:
    """The live events webhooks are made from: the factory-wide stream ``{prefix}events`` read as
    ``consumer`` (default: this host and process) of the consumer group ``webhooks``."""
    import os
    import socket

    settings = factory.settings
    return StreamGroupReader(
        factory.redis,
        f"{settings.redis_prefix}events",
        "webhooks",
        consumer or f"{socket.gethostname()}:{os.getpid()}",
        block_ms=int(min(1.0, settings.connect_timeout_s / 2) * 1000),  # below the client's socket timeout
        claim_idle_s=claim_idle_s,
    )


def webhooks(factory: Factory, *, consumer: str | None = None, claim_idle_s: float = 30.0) -> Webhooks:
    """The webhooks service (api/webhooks) on this factory's PostgreSQL (secrets sealed with the
    factory's key, as ``factory secrets``) and live event stream, with the settings' delivery policy.
    Cheap to build: front doors call it when they need it; the worker runs its ``serve``."""
    from api.webhooks import DeliveryPolicy, Webhooks
    from factory.webhooks_pg import PostgresWebhookStore

    s = factory.settings
    store = PostgresWebhookStore(factory.pool, lambda create: SecretBox.load(s.data_dir, s.secret_key, create=create))
    policy = DeliveryPolicy(
        attempts=s.webhook_attempts,
        backoff_s=s.webhook_backoff_s,
        backoff_cap_s=s.webhook_backoff_cap_s,
        timeout_s=s.webhook_timeout_s,
        concurrency=s.webhook_concurrency,
        per_webhook=s.webhook_per_receiver,
        poll_s=s.webhook_poll_s,
    )
    source = webhook_events(factory, consumer=consumer, claim_idle_s=claim_idle_s)
    return Webhooks(store, policy, source=source, log_days=s.webhook_log_days, allow_private=s.webhook_allow_private)
