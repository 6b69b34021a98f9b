"""The clarification broker on Redis Streams (DESIGN §6).

Keys, under the prefix (``factory:`` by default):

- ``clarify:{team}``: the team's request stream, read by consumer group ``responders``;
- ``clarify:count:{objective_id}``: requests per objective (the cap), expiring with the replies;
- ``clarify:answer:{request_id}``: the one accepted answer (``SET NX``): duplicates are answered once;
- ``reply:{request_id}``: where the asker waits (``BLPOP``), with a TTL;
- ``clarify:counters``: a hash of counters shared by every process.

Sending is one script call (cap + ``XADD``), answering is one script call (answer once + reply +
``XACK``), so a round trip costs the asker two commands and the responder two. A responder that
dies mid-request leaves the entry pending; a live one reclaims it with ``XAUTOCLAIM`` once it has
been idle for ``claim_idle_s`` (a working responder keeps its entries fresh with a heartbeat).
A lost connection (e.g. Redis restarted) is retried with backoff; the asker then re-sends the
request (responders deduplicate by id) or, past its deadline, reports it unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.base import (
    Answerer,
    BrokerLimits,
    BrokerOutcome,
    ClarificationReply,
    ClarificationRequest,
    Refusal,
    cap_refusal,
    refusal_for,
)
from teams.slugs import TeamSlug

log = logging.getLogger(__name__)

GROUP = "responders"
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: count, stream, counters, answer, reply · ARGV: max per objective, ttl, maxlen, request json, id
# Returns 0 when the request was answered already, else its number within the objective. Either
# way something is on the reply list at once unless the request went out, so the asker can send
# and wait in one round trip (a pipeline of this script and BLPOP).
_SEND = """
local answer = redis.call('GET', KEYS[4])
if answer then
  redis.call('LPUSH', KEYS[5], answer)
  redis.call('EXPIRE', KEYS[5], ARGV[2])
  return 0
end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[3], 'refused.cap', 1)
  redis.call('LPUSH', KEYS[5], 'refused:cap')
  redis.call('EXPIRE', KEYS[5], ARGV[2])
  return n
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[5], 'request', ARGV[4])
redis.call('HINCRBY', KEYS[3], 'requests', 1)
return n
"""

# KEYS: answer, reply, stream, counters · ARGV: reply json, ttl, entry id
_ANSWER = """
local first = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if first then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'replies', 1)
else
  redis.call('HINCRBY', KEYS[4], 'duplicates', 1)
end
redis.call('XACK', KEYS[3], 'responders', ARGV[3])
return first and 1 or 0
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBroker:
    """``ClarificationBroker`` on one Redis; any number of processes may ask and serve."""

    def __init__(self, redis: Redis, *, prefix: str = "factory:", limits: BrokerLimits | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self.limits = limits or BrokerLimits()
        self._send = redis.register_script(_SEND)
        self._answer = redis.register_script(_ANSWER)
        self._scripts_loaded = False

    def stream(self, team: str) -> str:
        return f"{self._prefix}clarify:{team}"

    def _key(self, kind: str, ident: str) -> str:
        return f"{self._prefix}{kind}:{ident}"

    @property
    def _counters(self) -> str:
        return f"{self._prefix}clarify:counters"

    async def _count(self, name: str, by: int = 1) -> None:
        with contextlib.suppress(*_LOST):
            await self._redis.hincrby(self._counters, name, by)  # type: ignore[misc]

    async def counters(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self._counters)  # type: ignore[misc]
        return {_text(k): int(v) for k, v in raw.items()}

    # -- asking ---------------------------------------------------------------------------------

    async def request(self, request: ClarificationRequest) -> BrokerOutcome:
        refused = refusal_for(request, self.limits)
        if refused is not None:
            await self._count(f"refused.{refused[0].value}")
            return BrokerOutcome(request=request, refusal=refused[0], detail=refused[1])
        deadline = time.monotonic() + self.limits.reply_timeout_s
        payload = request.model_dump_json()
        reply_key = self._key("reply", request.id)
        sent = False
        failures = 0
        while True:
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await self._count("timeouts")
                    return BrokerOutcome(
                        request=request,
                        refusal=Refusal.TIMEOUT,
                        detail=f"{request.target_team} did not answer within {self.limits.reply_timeout_s:g} s",
                    )
                wait_s = max(0.01, min(remaining, 1.0))
                if sent:
                    popped = await self._redis.blpop([reply_key], timeout=wait_s)  # type: ignore[misc]
                else:
                    count, popped = await self._send_and_wait(request, payload, reply_key, wait_s)
                    capped = cap_refusal(request, count, self.limits)
                    if capped is not None:
                        return BrokerOutcome(request=request, refusal=capped[0], detail=capped[1])
                    sent = True
                if popped is not None:
                    reply = ClarificationReply.model_validate_json(popped[1])
                    return BrokerOutcome(request=request, reply=reply, detail="" if reply.ok else reply.answer)
            except _LOST as exc:
                failures += 1
                if failures > self.limits.reconnect_attempts or time.monotonic() >= deadline:
                    return BrokerOutcome(
                        request=request,
                        refusal=Refusal.UNAVAILABLE,
                        detail=f"Redis unreachable while waiting for {request.target_team} ({exc})",
                    )
                log.warning("broker lost Redis (%s); retry %d", exc, failures)
                await asyncio.sleep(min(0.05 * 2**failures, 2.0, max(0.0, deadline - time.monotonic())))
                sent = await self._recover(request, payload, reply_key)

    async def _send_and_wait(
        self, request: ClarificationRequest, payload: str, reply_key: str, wait_s: float
    ) -> tuple[int, Any]:
        """The send script and the first wait, pipelined into one round trip."""
        keys = [
            self._key("clarify:count", request.objective_id),
            self.stream(request.target_team),
            self._counters,
            self._key("clarify:answer", request.id),
            reply_key,
        ]
        limits = self.limits
        args: list[str | int] = [
            limits.max_per_objective,
            limits.reply_ttl_s,
            limits.stream_maxlen,
            payload,
            request.id,
        ]
        await self._load_scripts()
        pipe = self._redis.pipeline(transaction=False)
        pipe.evalsha(self._send.sha, len(keys), *keys, *args)
        pipe.blpop([reply_key], timeout=wait_s)
        try:
            count, popped = await pipe.execute()
        except NoScriptError:
            raise self._scripts_gone() from None
        return int(count), popped

    async def _load_scripts(self) -> None:
        """Load both scripts once, so pipelines can call them by hash (EVALSHA) in one round trip."""
        if not self._scripts_loaded:
            for script in (_SEND, _ANSWER):
                await self._redis.script_load(script)
            self._scripts_loaded = True

    def _scripts_gone(self) -> RedisConnectionError:
        """Redis restarted and lost its script cache: reload on the retry that follows."""
        self._scripts_loaded = False
        return RedisConnectionError("the broker's scripts are gone (Redis restarted)")

    async def _recover(self, request: ClarificationRequest, payload: str, reply_key: str) -> bool:
        """After a lost connection: deliver an answer given meanwhile, else re-send (deduplicated by id)."""
        try:
            answer = await self._redis.get(self._key("clarify:answer", request.id))
            if answer is not None:
                await self._redis.rpush(reply_key, answer)  # type: ignore[misc]
                return True
            await self._redis.xadd(
                self.stream(request.target_team),
                {"id": request.id, "request": payload},
                maxlen=self.limits.stream_maxlen,
                approximate=True,
            )
            await self._count("resent")
            return True
        except _LOST:
            return True  # still down; the next wait fails again and backs off

    # -- answering ------------------------------------------------------------------------------

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def serve(self, team: TeamSlug, answerer: Answerer, *, consumer: str, stop: asyncio.Event) -> None:
        stream = self.stream(team)
        idle_ms = int(self.limits.claim_idle_s * 1000)
        failures = 0
        next_claim = 0.0
        ready = False
        while not stop.is_set():
            try:
                if not ready:
                    await self._ensure_group(stream)
                    ready = True
                entries: list[tuple[Any, dict[Any, Any]]] = []
                if time.monotonic() >= next_claim:
                    claimed = await self._redis.xautoclaim(stream, GROUP, consumer, min_idle_time=idle_ms, count=16)
                    next_claim = time.monotonic() + self.limits.claim_idle_s / 4
                    if claimed[1]:
                        await self._count("reclaims", len(claimed[1]))
                        entries += [e for e in claimed[1] if e and e[1]]
                if not entries:
                    read = await self._redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=16, block=500)
                    entries = [e for _, batch in read for e in batch]
                failures = 0
                if entries:
                    await self._handle_batch(stream, consumer, entries, answerer)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                ready = False  # the stream went away (e.g. Redis restarted without persistence)
            except _LOST as exc:
                failures += 1
                ready = False
                if failures > self.limits.reconnect_attempts * 4:
                    raise
                log.warning("responder %s lost Redis (%s); retry %d", consumer, exc, failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(0.05 * 2**failures, 2.0))

    async def _handle_batch(
        self, stream: str, consumer: str, entries: list[tuple[Any, dict[Any, Any]]], answerer: Answerer
    ) -> None:
        """Answer a batch: one round trip to skip what is answered already, the answers run
        concurrently, one round trip to deliver them all (each once) and acknowledge."""
        requests: list[tuple[Any, ClarificationRequest]] = []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            try:
                requests.append((entry_id, ClarificationRequest.model_validate_json(fields.get(b"request") or b"")))
            except ValidationError:
                log.warning("dropping malformed clarification entry %s on %s", _text(entry_id), stream)
                pipe.xack(stream, GROUP, entry_id)
                pipe.hincrby(self._counters, "malformed", 1)
        for _, request in requests:
            pipe.exists(self._key("clarify:answer", request.id))
        seen = (await pipe.execute())[-len(requests) :] if requests else []
        fresh = [(eid, req) for (eid, req), done in zip(requests, seen, strict=True) if not done]
        replies = await asyncio.gather(*(self._answer_one(stream, consumer, eid, req, answerer) for eid, req in fresh))
        pipe = self._redis.pipeline(transaction=False)
        for (entry_id, _), done in zip(requests, seen, strict=True):
            if done:
                pipe.xack(stream, GROUP, entry_id)
                pipe.hincrby(self._counters, "duplicates", 1)
        if fresh:
            await self._load_scripts()
        for (entry_id, request), reply in zip(fresh, replies, strict=True):
            keys = [self._key("clarify:answer", request.id), self._key("reply", request.id), stream, self._counters]
            pipe.evalsha(self._answer.sha, len(keys), *keys, reply.model_dump_json(), self.limits.reply_ttl_s, entry_id)
        try:
            await pipe.execute()
        except NoScriptError:  # the entries stay pending and are answered again
            raise self._scripts_gone() from None

    async def _answer_one(
        self, stream: str, consumer: str, entry_id: Any, request: ClarificationRequest, answerer: Answerer
    ) -> ClarificationReply:
        heartbeat = asyncio.create_task(self._keep_claimed(stream, consumer, entry_id))
        try:
            reply = await answerer(request)
        except Exception as exc:  # an answerer failure is the asker's answer, not a dead responder
            log.exception("answering %s failed", request.id)
            reply = ClarificationReply(
                request_id=request.id,
                team=request.target_team,
                ok=False,
                answer=f"the responder failed: {exc}",
                answered_at=_now(),
            )
        finally:
            heartbeat.cancel()
        return reply.model_copy(update={"responder": consumer})

    async def _keep_claimed(self, stream: str, consumer: str, entry_id: Any) -> None:
        """Reset the entry's idle time while it is being answered, so no live work is reclaimed."""
        with contextlib.suppress(*_LOST):
            while True:
                await asyncio.sleep(self.limits.claim_idle_s / 3)
                await self._redis.xclaim(stream, GROUP, consumer, 0, [entry_id], justid=True)
