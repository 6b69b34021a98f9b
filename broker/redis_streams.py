"""The clarification broker on Redis Streams (DESIGN §6).

Keys, under the prefix (``factory:`` by default):

- ``clarify:{team}``: the team's request stream, read by consumer group ``responders``; an entry is
  deleted once answered, and a backlog is trimmed to about ``stream_maxlen`` entries (the oldest
  requests beyond it are lost and their askers time out: size it above any backlog);
- ``clarify:count:{objective_id}``: requests per objective (the cap), expiring with the replies;
- ``clarify:sent:{request_id}``: the request is out (one entry, counted once) while its asker may wait;
- ``clarify:answer:{request_id}``: the one accepted answer (``SET NX``): duplicates are answered once;
- ``reply:{request_id}``: where the asker waits (``BLPOP``), with a TTL;
- ``clarify:counters``: a hash of counters shared by every process.

Sending is one script call (cap + ``XADD``) pipelined with the first wait, answering is one script
call (answer once + reply + ``XACK`` + ``XDEL``); a fresh entry is answered with no round trip
before it, and a quick answer starts no heartbeat. A responder that dies mid-request leaves the entry
pending; a live one reclaims it with ``XAUTOCLAIM`` once it has been idle for ``claim_idle_s`` (a
working responder keeps its entries fresh with a heartbeat). A lost connection (e.g. Redis restarted) is
retried with backoff and the request re-sent through the same script, which adds an entry marked
``resent`` only if the request is still unanswered; an asker also re-sends when Redis no longer
knows its request (restarted without its data, the client having reconnected by itself). Re-sent
and reclaimed entries are checked against the answers first, so each request is answered once.
Past its deadline the asker reports the request unavailable (Redis away) or timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
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
from broker.redis_scripts import ANSWER, SEND
from teams.slugs import TeamSlug

log = logging.getLogger(__name__)

GROUP = "responders"
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
_RESENT = b"resent"  # the field that marks an entry the asker sent again
_GRACE_S = 0.5  # beyond the reply timeout, for the last round trip; and the bound on a counter update


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
        self._send = redis.register_script(SEND)
        self._answer = redis.register_script(ANSWER)
        self._scripts_loaded = False

    def stream(self, team: str) -> str:
        return f"{self._prefix}clarify:{team}"

    def _key(self, kind: str, ident: str) -> str:
        return f"{self._prefix}{kind}:{ident}"

    @property
    def _counters(self) -> str:
        return f"{self._prefix}clarify:counters"

    async def _count(self, name: str, by: int = 1) -> None:
        """Best effort, and bounded: a counter is never worth waiting on a Redis that is away."""
        with contextlib.suppress(TimeoutError, *_LOST):
            async with asyncio.timeout(_GRACE_S):
                await self._redis.hincrby(self._counters, name, by)  # type: ignore[misc]

    async def counters(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self._counters)  # type: ignore[misc]
        return {_text(k): int(v) for k, v in raw.items()}

    async def backlog(self, teams: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per team, in one round trip: ``stream``, its requests not answered yet (answered entries
        are deleted), of which ``pending`` are with a responder and ``waiting`` are not read yet."""
        pipe = self._redis.pipeline(transaction=False)
        for team in teams:
            pipe.xlen(self.stream(team))
            pipe.xpending(self.stream(team), GROUP)
        results = await pipe.execute(raise_on_error=False)
        backlog = {}
        for team, length, pending in zip(teams, results[::2], results[1::2], strict=True):
            for result in (length, pending):
                if isinstance(result, Exception) and "NOGROUP" not in str(result):
                    raise result
            busy = 0 if isinstance(pending, Exception) else int(pending["pending"])  # NOGROUP: never served
            backlog[team] = {"stream": int(length), "pending": busy, "waiting": max(0, int(length) - busy)}
        return backlog

    def _hold_s(self) -> int:
        """How long a request's keys live: the reply TTL, and never shorter than the asker may wait."""
        return max(self.limits.reply_ttl_s, math.ceil(self.limits.reply_timeout_s))

    # -- asking ---------------------------------------------------------------------------------

    async def request(self, request: ClarificationRequest, limits: BrokerLimits | None = None) -> BrokerOutcome:
        limits = limits or self.limits
        refused = refusal_for(request, limits)
        if refused is not None:
            await self._count(f"refused.{refused[0].value}")
            return BrokerOutcome(request=request, refusal=refused[0], detail=refused[1])
        lost: list[BaseException] = []  # connection losses not yet recovered from
        deadline = asyncio.get_running_loop().time() + limits.reply_timeout_s
        try:
            # The loop keeps its own deadline; this bounds what it cannot see, such as a client
            # that retries a lost connection by itself for longer than the asker may wait.
            async with asyncio.timeout_at(deadline + _GRACE_S):
                return await self._ask(request, deadline, lost, limits)
        except TimeoutError:
            pass
        if lost:
            await self._count(f"refused.{Refusal.UNAVAILABLE.value}")
            return BrokerOutcome(
                request=request,
                refusal=Refusal.UNAVAILABLE,
                detail=f"Redis unreachable while waiting for {request.target_team} ({lost[-1]})",
            )
        await self._count("timeouts")
        return BrokerOutcome(
            request=request,
            refusal=Refusal.TIMEOUT,
            detail=f"{request.target_team} did not answer within {limits.reply_timeout_s:g} s",
        )

    async def _ask(
        self, request: ClarificationRequest, deadline: float, lost: list[BaseException], limits: BrokerLimits
    ) -> BrokerOutcome:
        """Send, then wait in slices; after a lost connection, or if Redis forgot the request
        (restarted without its data), send it again: the send script and responders deduplicate by id."""
        loop = asyncio.get_running_loop()
        keys = self._request_keys(request)
        payload = request.model_dump_json()
        sent = resend = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            wait_s = max(0.01, min(remaining, 1.0))
            try:
                if not sent:
                    count, popped = await self._send_and_wait(keys, payload, request.id, wait_s, resend=resend)
                    capped = cap_refusal(request, count, limits)
                    if capped is not None:
                        return BrokerOutcome(request=request, refusal=capped[0], detail=capped[1])
                    sent = True
                else:
                    popped, alive = await self._wait(keys, wait_s)
                    if popped is None and not alive:
                        log.warning("Redis no longer holds clarification %s; sending it again", request.id)
                        sent = False
                        resend = True
                lost.clear()
                if popped is not None:
                    reply = ClarificationReply.model_validate_json(popped)
                    return BrokerOutcome(request=request, reply=reply, detail="" if reply.ok else reply.answer)
            except _LOST as exc:
                lost.append(exc)
                if len(lost) > self.limits.reconnect_attempts:
                    raise TimeoutError from exc  # reported as unavailable
                log.warning("broker lost Redis (%s); retry %d", exc, len(lost))
                await asyncio.sleep(min(0.05 * 2 ** len(lost), 2.0, max(0.0, deadline - loop.time())))
                sent = False
                resend = True

    def _request_keys(self, request: ClarificationRequest) -> list[str]:
        """The send script's keys; the last three are also what the asker waits on."""
        return [
            self._key("clarify:count", request.objective_id),
            self.stream(request.target_team),
            self._counters,
            self._key("clarify:answer", request.id),
            self._key("reply", request.id),
            self._key("clarify:sent", request.id),
        ]

    async def _send_and_wait(
        self, keys: list[str], payload: str, ident: str, wait_s: float, *, resend: bool
    ) -> tuple[int, bytes | None]:
        """The send script and the first wait, pipelined into one round trip."""
        limits = self.limits
        args: list[str | int] = [
            limits.max_per_objective,
            self._hold_s(),
            limits.stream_maxlen,
            payload,
            ident,
            int(resend),
        ]
        await self._load_scripts()
        pipe = self._redis.pipeline(transaction=False)
        pipe.evalsha(self._send.sha, len(keys), *keys, *args)
        pipe.blpop([keys[4]], timeout=wait_s)
        try:
            count, popped = await pipe.execute()
        except NoScriptError:
            raise self._scripts_gone() from None
        return int(count), popped[1] if popped else None

    async def _wait(self, keys: list[str], wait_s: float) -> tuple[bytes | None, bool]:
        """Wait once more: (the reply if one came, is the request still known to Redis?).

        The answer key also serves a second asker of the same id, whose reply the first one popped."""
        answer_key, reply_key, sent_key = keys[3:]
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(answer_key)
        pipe.exists(sent_key)
        pipe.blpop([reply_key], timeout=wait_s)
        answer, sent, popped = await pipe.execute()
        if popped:
            return popped[1], True
        return answer, answer is not None or bool(sent)

    async def _load_scripts(self) -> None:
        """Load both scripts once, so pipelines can call them by hash (EVALSHA) in one round trip."""
        if not self._scripts_loaded:
            for script in (SEND, ANSWER):
                await self._redis.script_load(script)
            self._scripts_loaded = True

    def _scripts_gone(self) -> RedisConnectionError:
        """Redis restarted and lost its script cache: reload on the retry that follows."""
        self._scripts_loaded = False
        return RedisConnectionError("the broker's scripts are gone (Redis restarted)")

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
                reclaimed = bool(entries)
                if not entries:
                    read = await self._redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=16, block=500)
                    entries = [e for _, batch in read for e in batch]
                failures = 0
                if entries:
                    await self._handle_batch(stream, consumer, entries, answerer, reclaimed=reclaimed)
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
        self,
        stream: str,
        consumer: str,
        entries: list[tuple[Any, dict[Any, Any]]],
        answerer: Answerer,
        *,
        reclaimed: bool,
    ) -> None:
        """Answer a batch, each request id once, then deliver every answer in one round trip."""
        fresh, duplicates = await self._triage(stream, entries, reclaimed=reclaimed)
        with self._heartbeat(stream, consumer, [entry_id for entry_id, _ in fresh]):
            if len(fresh) == 1:  # the usual case: no task to schedule
                replies = [await self._answer_one(consumer, fresh[0][1], answerer)]
            else:
                replies = await asyncio.gather(*(self._answer_one(consumer, req, answerer) for _, req in fresh))
        answered = list(zip(fresh, replies, strict=True))
        for attempt in range(1, self.limits.reconnect_attempts + 1):
            try:  # the answers are made: keep them through a lost connection rather than answer again
                return await self._deliver(stream, answered, duplicates)
            except _LOST as exc:
                log.warning("responder %s could not deliver (%s); retry %d", consumer, exc, attempt)
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
        await self._deliver(stream, answered, duplicates)

    async def _triage(
        self, stream: str, entries: list[tuple[Any, dict[Any, Any]]], *, reclaimed: bool
    ) -> tuple[list[tuple[Any, ClarificationRequest]], list[Any]]:
        """(entries to answer, duplicate entries); malformed entries are dropped.

        A fresh entry is its request's only one (the send script adds one per id), so it costs no
        round trip; only reclaimed and re-sent entries may be answered already and are checked."""
        requests: list[tuple[Any, ClarificationRequest, bool]] = []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            try:
                request = ClarificationRequest.model_validate_json(fields.get(b"request") or b"")
                requests.append((entry_id, request, reclaimed or _RESENT in fields))
            except ValidationError:
                log.warning("dropping malformed clarification entry %s on %s", _text(entry_id), stream)
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                pipe.hincrby(self._counters, "malformed", 1)
        skipped = len(pipe)
        for _, request, suspect in requests:
            if suspect:
                pipe.exists(self._key("clarify:answer", request.id))
        known = iter((await pipe.execute())[skipped:] if len(pipe) else [])
        fresh: list[tuple[Any, ClarificationRequest]] = []
        duplicates: list[Any] = []
        taken: set[str] = set()
        for entry_id, request, suspect in requests:
            if (suspect and next(known)) or request.id in taken:  # answered already, or twice in this batch
                duplicates.append(entry_id)
            else:
                taken.add(request.id)
                fresh.append((entry_id, request))
        return fresh, duplicates

    async def _deliver(
        self,
        stream: str,
        answered: list[tuple[tuple[Any, ClarificationRequest], ClarificationReply]],
        duplicates: list[Any],
    ) -> None:
        """One round trip: each reply delivered once (``SET NX``), every entry acknowledged. If Redis
        restarted meanwhile and lost the script, load it again rather than answer again."""
        calls: list[tuple[list[str], list[Any]]] = [
            (
                [self._key("clarify:answer", request.id), self._key("reply", request.id), stream, self._counters],
                [reply.model_dump_json(), self.limits.reply_ttl_s, entry_id],
            )
            for (entry_id, request), reply in answered
        ]
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in duplicates:
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            pipe.hincrby(self._counters, "duplicates", 1)
        if calls:
            await self._load_scripts()
        for keys, args in calls:
            pipe.evalsha(self._answer.sha, len(keys), *keys, *args)
        results = (await pipe.execute(raise_on_error=False))[3 * len(duplicates) :] if len(pipe) else []
        retry = [call for call, result in zip(calls, results, strict=True) if isinstance(result, NoScriptError)]
        if retry:
            self._scripts_loaded = False
            await self._load_scripts()
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in retry:
                pipe.evalsha(self._answer.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, NoScriptError):  # lost again: the entries stay pending and are reclaimed
                raise self._scripts_gone() from result
            if isinstance(result, Exception):
                raise result

    async def _answer_one(self, consumer: str, request: ClarificationRequest, answerer: Answerer) -> ClarificationReply:
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
        return reply.model_copy(update={"responder": consumer})

    @contextlib.contextmanager
    def _heartbeat(self, stream: str, consumer: str, entry_ids: list[Any]) -> Iterator[None]:
        """While a batch is answered, reset its entries' idle time so no live work is reclaimed.

        Started only once an answer has taken a third of ``claim_idle_s``: a quick answer costs
        no task and no round trip."""
        period_s = self.limits.claim_idle_s / 3
        beating: list[asyncio.Task[None]] = []

        async def beat() -> None:
            with contextlib.suppress(ResponseError, *_LOST):  # a lost Redis or group is the serve loop's to mend
                while True:
                    await self._redis.xclaim(stream, GROUP, consumer, 0, entry_ids, justid=True)
                    await asyncio.sleep(period_s)

        timer = asyncio.get_running_loop().call_later(period_s, lambda: beating.append(asyncio.create_task(beat())))
        try:
            yield
        finally:
            timer.cancel()
            for task in beating:
                task.cancel()
