"""Property: random clarification graphs never exceed the broker's limits and never wait forever.

Hypothesis draws teams that ask random targets (themselves included) and whose answerers ask
further teams in turn, some teams with no responder at all, and random limits. Every request is
recorded with its outcome and every delivery with its request; the checks count them against an
oracle written here from DESIGN §6, not from the broker's code:

- a request refused for routing (self, cycle, depth) is refused for that reason, and only those;
- per objective, the accepted requests are exactly min(cap, requests that passed routing);
- nothing with a cycle, a self-route or a chain over the depth limit reaches a responder, and
  nothing reaches one twice;
- every request ends, answered or refused, within the reply timeout (plus a little);
- the broker's counters agree with what was observed.

Many examples on the in-memory twin, fewer on real Redis (the same checks).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from broker.base import (
    Answerer,
    BrokerLimits,
    BrokerOutcome,
    ClarificationBroker,
    ClarificationReply,
    ClarificationRequest,
)
from broker.base import Refusal as R
from broker.in_memory import InMemoryBroker
from broker.redis_streams import RedisBroker
from teams.slugs import TeamSlug

TEAMS: tuple[TeamSlug, ...] = (
    "business-analysis",
    "api-design",
    "database-engineering",
    "qa-engineering",
    "documentation",
)
ROUTING = (R.SELF_ROUTING, R.CYCLE, R.DEPTH)
SLACK_S = 1.0  # how far past the reply timeout a request may end (scheduling on a loaded machine)


@dataclass(frozen=True)
class Graph:
    """Who asks whom: ``roots`` are (asker, target, objective); ``asks[t]`` is what ``t`` asks while answering."""

    roots: tuple[tuple[TeamSlug, TeamSlug, int], ...]
    asks: dict[TeamSlug, tuple[TeamSlug, ...]]
    silent: frozenset[TeamSlug]  # no responder: their requests time out
    shared_objective: bool  # nested questions count against the root's objective, else their own
    max_depth: int
    cap: int


@st.composite
def graphs(draw: st.DrawFn, max_roots: int = 6) -> Graph:
    pool = TEAMS[: draw(st.integers(2, len(TEAMS)))]
    team = st.sampled_from(pool)
    return Graph(
        roots=tuple(draw(st.lists(st.tuples(team, team, st.integers(0, 2)), min_size=1, max_size=max_roots))),
        asks={t: tuple(draw(st.lists(team, max_size=3))) for t in pool},
        silent=frozenset(draw(st.sets(team, max_size=1))),
        shared_objective=draw(st.booleans()),
        max_depth=draw(st.integers(1, 3)),
        cap=draw(st.integers(1, 4)),
    )


def expected_routing_refusal(request: ClarificationRequest, max_depth: int) -> R | None:
    """DESIGN §6, in its order: no self-routing, no cycles at any depth, at most ``max_depth`` hops."""
    if request.target_team == request.from_team:
        return R.SELF_ROUTING
    if request.target_team in request.hop_chain:
        return R.CYCLE
    if len(request.hop_chain) > max_depth:
        return R.DEPTH
    return None


@dataclass
class Record:
    asked: list[tuple[ClarificationRequest, BrokerOutcome | None, float]] = field(default_factory=list)
    delivered: list[ClarificationRequest] = field(default_factory=list)


def _request(ident: str, objective: str, chain: list[TeamSlug], target: TeamSlug) -> ClarificationRequest:
    return ClarificationRequest(
        id=ident,
        run_id="prop",
        objective_id=objective,
        from_team=chain[-1],
        target_team=target,
        question=f"{ident}?",
        hop_chain=chain,
        created_at=datetime.now(UTC),
    )


async def _play(broker: ClarificationBroker, graph: Graph) -> Record:
    record = Record()
    timeout_s = broker.limits.reply_timeout_s

    async def ask(request: ClarificationRequest) -> BrokerOutcome | None:
        started = time.monotonic()
        try:  # the hang detector: a request still waiting well past its timeout is a failure
            outcome: BrokerOutcome | None = await asyncio.wait_for(broker.request(request), timeout_s + 5)
        except TimeoutError:
            outcome = None
        record.asked.append((request, outcome, time.monotonic() - started))
        return outcome

    def answerer(me: TeamSlug) -> Answerer:
        async def answer(request: ClarificationRequest) -> ClarificationReply:
            record.delivered.append(request)
            objective = request.objective_id if graph.shared_objective else f"clarify:{request.id}"
            chain = [*request.hop_chain, me]
            await asyncio.gather(
                *(ask(_request(f"{request.id}/{k}", objective, chain, t)) for k, t in enumerate(graph.asks[me]))
            )
            return ClarificationReply(
                request_id=request.id, team=me, ok=True, answer=f"{me} answers", answered_at=datetime.now(UTC)
            )

        return answer

    stop = asyncio.Event()
    serving = [
        asyncio.create_task(broker.serve(t, answerer(t), consumer=f"c-{t}", stop=stop))
        for t in graph.asks
        if t not in graph.silent
    ]
    try:
        await asyncio.gather(*(ask(_request(f"r{i}", f"o{o}", [a], t)) for i, (a, t, o) in enumerate(graph.roots)))
    finally:
        stop.set()
        # Answers under way finish (their own questions are bounded too); then the responders stop.
        await asyncio.wait_for(asyncio.gather(*serving), timeout=(broker.limits.max_depth + 2) * (timeout_s + 5))
    return record


async def _check(broker: ClarificationBroker, graph: Graph, record: Record) -> None:
    limits = broker.limits
    valid: defaultdict[str, set[str]] = defaultdict(set)  # objective -> ids that passed routing
    accepted: defaultdict[str, set[str]] = defaultdict(set)  # objective -> ids the broker sent
    for request, outcome, elapsed in record.asked:
        assert outcome is not None, f"{request.route()} ({request.id}) never ended"
        assert elapsed <= limits.reply_timeout_s + SLACK_S, f"{request.id} took {elapsed:.2f} s"
        expected = expected_routing_refusal(request, limits.max_depth)
        if expected is not None:
            assert outcome.refusal is expected, (request.route(), outcome.refusal, expected)
            continue
        assert outcome.refusal not in ROUTING, (request.route(), outcome.refusal)
        valid[request.objective_id].add(request.id)
        if outcome.refusal is R.CAP:
            continue
        accepted[request.objective_id].add(request.id)
        assert outcome.refusal in (None, R.TIMEOUT), outcome  # sent: nothing else can come of it here
        if outcome.reply is not None:
            assert outcome.answered and outcome.reply.team == request.target_team
        if request.target_team in graph.silent:
            assert outcome.refusal is R.TIMEOUT, outcome
        elif not graph.asks[request.target_team]:  # a responder that asks nobody answers promptly
            assert outcome.answered, outcome
    for objective, ids in valid.items():
        assert len(accepted[objective]) == min(limits.max_per_objective, len(ids)), objective
    delivered = Counter(r.id for r in record.delivered)
    assert not [i for i, n in delivered.items() if n > 1], "a request was delivered twice"
    for request in record.delivered:
        assert request.target_team not in request.hop_chain and request.target_team != request.from_team
        assert request.depth <= limits.max_depth
        assert request.id in accepted[request.objective_id]
    per_objective = Counter(r.objective_id for r in record.delivered)
    assert max(per_objective.values(), default=0) <= limits.max_per_objective
    counters = await broker.counters()
    refusals = Counter(o.refusal.value for _, o, _ in record.asked if o is not None and o.refusal is not None)
    assert counters.get("requests", 0) == sum(len(ids) for ids in accepted.values())
    assert counters.get("replies", 0) == len(delivered)
    assert counters.get("timeouts", 0) == refusals[R.TIMEOUT.value]
    for reason in (*ROUTING, R.CAP):
        assert counters.get(f"refused.{reason.value}", 0) == refusals[reason.value], reason


def _limits(graph: Graph, reply_timeout_s: float) -> BrokerLimits:
    return BrokerLimits(
        max_per_objective=graph.cap, max_depth=graph.max_depth, reply_timeout_s=reply_timeout_s, claim_idle_s=30
    )


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(graph=graphs())
def test_random_clarification_graphs_stay_within_the_limits_on_the_twin(graph: Graph) -> None:
    async def go() -> None:
        broker = InMemoryBroker(_limits(graph, reply_timeout_s=0.25))
        await _check(broker, graph, await _play(broker, graph))

    asyncio.run(go())


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(graph=graphs(max_roots=4))
def test_random_clarification_graphs_stay_within_the_limits_on_redis(redis_base_url: str, graph: Graph) -> None:
    async def go() -> None:
        prefix = f"test:{uuid.uuid4().hex[:10]}:"
        redis = Redis.from_url(redis_base_url)
        try:
            broker = RedisBroker(redis, prefix=prefix, limits=_limits(graph, reply_timeout_s=1.0))
            await _check(broker, graph, await _play(broker, graph))
        finally:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()

    asyncio.run(go())
