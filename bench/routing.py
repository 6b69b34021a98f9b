"""Routing overhead, fallback latency and cooldowns, against the local fake provider. Prints JSON.

All in one process and one run, against ``tests.fakeprovider.FakeProvider`` on loopback with zero
think time, so what is measured is the factory's own work around LiteLLM (issue 14, Benchmark):

- routed vs bare: ``LiteLLMRouter.complete`` (one deployment, JSON-schema output) against a bare
  ``litellm.acompletion`` with the same messages, response format, base and key; pairs interleaved
  (routed, bare, routed, bare ...) after a warm-up so a shared machine's drift hits both alike.
  Goal: p50 ratio ≤ 1.10. Above it (or with ``--profile``) the routed path is profiled.
- 429 → fallback: chain [A, B], A answers 429 with a Retry-After far beyond the bench; the cooldown
  book is emptied before each sample so A is really asked. Excess = time from the 429 (A's arrival
  as the fake provider records it, same monotonic clock) to B's answer, minus B's own latency (B
  alone through the router, interleaved). Goal: p50 ≤ 20 ms. Also the stricter whole call minus B
  (it adds A's request and 429 round trip), and A's 429 alone through bare LiteLLM, for scale.
- outage: chain [A, B], A failing (500, or hanging past a short timeout) for ``--outage-s``, calls
  started on a fixed tick (open loop, as a service's callers do); calls that reach A after its first
  cooldown began, under the default cooldown policy and with ``allowed_fails=2``. Goal: 0. (The
  default cooldown is 60 s, so a 30 s outage sees no probe; a longer one would see one probe a
  cooldown, by design.)

    python -m bench.routing [--calls 300] [--warmup 30] [--fallback-calls 200] [--outage-s 30]
                            [--interval-ms 50] [--hang-timeout-s 0.5] [--profile]

Run from the repository root: it imports the fake provider from ``tests/`` (a dev dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: bench/ would shadow the routing package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.stats import pct
from factory.errors import RoutingError  # noqa: E402
from routing.base import CHAT_ALIASES, ChatRequest, ChatResponse, Message  # noqa: E402
from routing.config import Cooldown, Deployment, RoutingConfig  # noqa: E402
from routing.cooldowns import Cooldowns  # noqa: E402
from routing.router import LiteLLMRouter  # noqa: E402
from tests.fakeprovider import Behaviour, FakeProvider  # noqa: E402

MODEL = "openai/test-model"
KEY = "no-key-configured"  # what the router sends a keyless OpenAI-compatible server
TIMEOUT_S = 30.0
MAX_TOKENS = 64
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "ok": {"type": "boolean"}},
    "required": ["title", "ok"],
    "additionalProperties": False,
}
REQUEST = ChatRequest(
    alias="factory/fast",
    messages=[Message(role="system", content="You answer benchmarks."), Message(role="user", content="Say ok.")],
    json_schema=SCHEMA,
    max_tokens=MAX_TOKENS,
    temperature=0.0,
)
#: What the router sends for a ``json_schema`` deployment (``LiteLLMRouter._ask``), for the bare call.
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "task_result", "schema": SCHEMA, "strict": False}}
REPO = Path(__file__).resolve().parents[1]
GOALS = {"routed_over_bare_p50": 1.10, "fallback_excess_p50_ms": 20.0, "calls_to_a_after_first_cooldown": 0}


@dataclass(frozen=True)
class Options:
    calls: int = 300
    warmup: int = 30
    fallback_calls: int = 200
    outage_s: float = 30.0
    interval_ms: float = 50.0
    hang_timeout_s: float = 0.5
    profile: bool = False
    profile_calls: int = 300

    def check(self) -> None:
        sizes = (self.calls, self.fallback_calls, self.profile_calls)
        if not (all(1 <= n <= 100_000 for n in sizes) and 0 <= self.warmup <= 10_000):
            raise SystemExit("--calls, --fallback-calls and --profile-calls take 1..100000, --warmup 0..10000")
        if not (0.1 <= self.outage_s <= 3600 and 1 <= self.interval_ms <= 10_000 and 0.05 <= self.hang_timeout_s <= 60):
            raise SystemExit("--outage-s takes 0.1..3600, --interval-ms 1..10000, --hang-timeout-s 0.05..60")


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(statistics.median(samples_ms), 3),
        "p90_ms": round(pct(samples_ms, 0.90), 3),
        "p99_ms": round(pct(samples_ms, 0.99), 3),
    }


def routing(*chain: Deployment, cooldown: Cooldown | None = None) -> RoutingConfig:
    return RoutingConfig(aliases=dict.fromkeys(CHAT_ALIASES, list(chain)), cooldown=cooldown or Cooldown())


def at(fake: FakeProvider, **extra: Any) -> Deployment:
    return Deployment(model=MODEL, api_base=fake.url, structured="json_schema", **extra)


async def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call
    return (time.perf_counter() - started) * 1000, result


def answered(text: str | None) -> None:
    """A call must have brought back the JSON asked for: a broken path is not a fast one."""
    if not isinstance(text, str) or not isinstance(json.loads(text).get("ok"), bool):
        raise RuntimeError(f"the fake provider's answer is not the requested JSON: {text!r}")


# ------------------------------------------------------------------------------- profile


def _where(file: str, line: int, name: str) -> str:
    path = Path(file)
    shown = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    return f"{shown}:{line}:{name}"


async def profiled(call: Callable[[], Awaitable[Any]], calls: int) -> dict[str, tuple[float, float]]:
    """cProfile of the event-loop thread over ``calls`` calls: per function, its own and cumulative
    ms per call (the fake provider serves from a thread of its own, so its work is not in it)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        await call()
    profiler.disable()
    table: dict[Any, Any] = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    return {
        _where(f, line, name): (tt * 1000 / calls, ct * 1000 / calls)
        for (f, line, name), (_cc, _nc, tt, ct, _callers) in table.items()
    }


def ours(table: dict[str, tuple[float, float]], top: int = 12) -> dict[str, float]:
    """The factory's own functions (files of this repository), by cumulative ms per call."""
    mine = [(k, v[1]) for k, v in table.items() if k.split(":", 1)[0].startswith(OUR_PACKAGES)]
    return {k: round(v, 4) for k, v in sorted(mine, key=lambda kv: -kv[1])[:top]}


def hottest(table: dict[str, tuple[float, float]], top: int = 15) -> dict[str, float]:
    """Functions by cumulative ms per call, leaving out the event loop's own frames."""
    shown = [(k, v[1]) for k, v in table.items() if not k.startswith(_LOOP_FRAMES) and not any(w in k for w in _WAITS)]
    return {k: round(v, 4) for k, v in sorted(shown, key=lambda kv: -kv[1])[:top]}


OUR_PACKAGES = ("routing/", "observability/", "factory/")
_LOOP_FRAMES = ("base_events.py", "events.py", "selectors.py", "tasks.py", "runners.py", "bench/")
_WAITS = ("'poll' of", "'run' of '_contextvars")


# ------------------------------------------------------------------------------- routed vs bare


async def routed_vs_bare(options: Options) -> dict[str, Any]:
    with FakeProvider() as fake:
        router = LiteLLMRouter(routing(at(fake)))
        litellm = await router.ready()  # the same LiteLLM set-up (drop_params, providers) for both
        messages = [m.model_dump() for m in REQUEST.messages]

        async def bare() -> Any:
            return await litellm.acompletion(
                model=MODEL, messages=messages, api_base=fake.url, api_key=KEY, response_format=RESPONSE_FORMAT,
                max_tokens=MAX_TOKENS, temperature=0.0, timeout=TIMEOUT_S, num_retries=0, max_retries=0,
            )  # fmt: skip

        async def routed() -> ChatResponse:
            return await router.complete(REQUEST, timeout_s=TIMEOUT_S)

        mine: list[float] = []
        theirs: list[float] = []
        gc.collect()
        for i in range(options.warmup + options.calls):  # routed, bare, routed, bare ...
            ms_mine, response = await timed(routed())
            ms_theirs, raw = await timed(bare())
            answered(response.text)
            answered(raw.choices[0].message.content)
            if i >= options.warmup:
                mine.append(ms_mine)
                theirs.append(ms_theirs)
        routed_s, bare_s = summary(mine), summary(theirs)
        ratio = routed_s["p50_ms"] / bare_s["p50_ms"]
        result: dict[str, Any] = {
            "routed": routed_s,
            "bare": bare_s,
            "routed_over_bare_p50": round(ratio, 3),
            "paired_difference_p50_ms": round(statistics.median(a - b for a, b in zip(mine, theirs, strict=True)), 3),
            "requests_served": fake.count("/v1/chat/completions"),
        }
        if options.profile or ratio > GOALS["routed_over_bare_p50"]:
            a, b = await profiled(routed, options.profile_calls), await profiled(bare, options.profile_calls)
            more = sorted(((k, v[0] - b.get(k, (0.0, 0.0))[0]) for k, v in a.items()), key=lambda kv: -kv[1])
            result["profile"] = {
                "calls": options.profile_calls,
                "note": "ms per call under cProfile (inflated several times); compare entries, not totals",
                "router_cumulative_ms": ours(a),
                "own_ms_more_than_bare": {k: round(v, 4) for k, v in more[:15]},
            }
    return result


# ------------------------------------------------------------------------------- 429 → fallback


async def fallback_after_429(options: Options) -> dict[str, Any]:
    """A's 429 then B's answer, against B alone and A's 429 alone, interleaved. The 429 leaves the
    fake provider as soon as the request arrives (zero think time), and the provider records that
    arrival on the same monotonic clock, so "from the 429 to B's answer" is measured directly."""
    with FakeProvider(default="rate_limit", retry_after_s=3600) as a, FakeProvider() as b:
        router = LiteLLMRouter(routing(at(a), at(b), cooldown=Cooldown(max_retry_after_s=86_400)))
        alone = LiteLLMRouter(routing(at(b)))
        litellm = await router.ready()
        messages = [m.model_dump() for m in REQUEST.messages]

        async def rate_limited() -> None:
            """A's 429 alone, bare: the round trip LiteLLM makes of it, fallback or not."""
            try:
                await litellm.acompletion(
                    model=MODEL, messages=messages, api_base=a.url, api_key=KEY, response_format=RESPONSE_FORMAT,
                    max_tokens=MAX_TOKENS, temperature=0.0, timeout=TIMEOUT_S, num_retries=0, max_retries=0,
                )  # fmt: skip
            except Exception as exc:
                if getattr(exc, "status_code", None) != 429:
                    raise
            else:
                raise RuntimeError("the fake provider answered where a 429 was scripted")

        async def fallback() -> ChatResponse:
            router.cooldowns = Cooldowns()  # A is asked again, as on the first call of an outage
            response = await router.complete(REQUEST, timeout_s=TIMEOUT_S)
            if [f.kind for f in response.fallbacks] != ["rate_limit"]:
                raise RuntimeError(f"expected one 429 then B's answer, got {response.fallbacks}")
            answered(response.text)
            return response

        whole: list[float] = []
        from_429: list[float] = []
        b_alone: list[float] = []
        a_429: list[float] = []
        gc.collect()
        for i in range(options.warmup + options.fallback_calls):
            ms, _ = await timed(fallback())
            answered_at = time.monotonic()
            sent_429_at = a.requests[-1].at
            ms_b, direct = await timed(alone.complete(REQUEST, timeout_s=TIMEOUT_S))
            answered(direct.text)
            ms_a, _ = await timed(rate_limited())
            if i >= options.warmup:
                whole.append(ms)
                from_429.append((answered_at - sent_429_at) * 1000)
                b_alone.append(ms_b)
                a_429.append(ms_a)
        s = {name: summary(v) for name, v in (("whole", whole), ("from_429", from_429), ("b", b_alone), ("a", a_429))}
        result: dict[str, Any] = {
            "fallback_call": s["whole"],
            "from_429_to_answer": s["from_429"],
            "b_alone": s["b"],
            "a_429_alone_bare": s["a"],
            "excess_from_429_p50_ms": round(s["from_429"]["p50_ms"] - s["b"]["p50_ms"], 3),
            "excess_whole_call_p50_ms": round(s["whole"]["p50_ms"] - s["b"]["p50_ms"], 3),
            "requests_to_a": a.count("/v1/chat/completions"),
        }
        if options.profile or result["excess_from_429_p50_ms"] > GOALS["fallback_excess_p50_ms"]:
            table = await profiled(fallback, options.profile_calls)
            result["profile"] = {
                "calls": options.profile_calls,
                "note": "ms per call under cProfile (inflated several times); compare entries, not totals",
                "router_cumulative_ms": ours(table),
                "hottest_cumulative_ms": hottest(table),
            }
        return result


# ------------------------------------------------------------------------------- outage


async def outage(options: Options, behaviour: Behaviour, policy: Cooldown) -> dict[str, Any]:
    """Calls on a fixed tick for ``options.outage_s`` while A fails with ``behaviour``; which of them
    reached A, and when its first cooldown began. A call decides whether to ask A synchronously when
    it starts (the router awaits nothing before), and the cooldown is told synchronously too, so the
    call's start orders it exactly against the cooldown."""
    hang = behaviour == "hang"
    with FakeProvider(default=behaviour, hang_s=options.hang_timeout_s + 1.0) as a, FakeProvider() as b:
        first = at(a, timeout_s=options.hang_timeout_s) if hang else at(a)
        cools: list[float] = []
        router = LiteLLMRouter(
            routing(first, at(b), cooldown=policy),
            cooldowns=Cooldowns(on_cool=lambda d, _s, _r: cools.append(time.monotonic()) if d == first.id else None),
        )
        await router.ready()

        async def one() -> tuple[float, bool, float, bool]:
            started = time.monotonic()
            ms, ok = 0.0, True
            try:
                ms, response = await timed(router.complete(REQUEST, timeout_s=TIMEOUT_S))
                hops = response.fallbacks
            except RoutingError as exc:
                ok, hops = False, exc.fallbacks
            tried = any(h.deployment == first.id and h.kind != "cooling" for h in hops)
            return started, tried, ms, ok

        loop = asyncio.get_running_loop()
        ticks = max(1, round(options.outage_s * 1000 / options.interval_ms))
        began = loop.time()
        tasks: list[asyncio.Task[tuple[float, bool, float, bool]]] = []
        for i in range(ticks):  # open loop: a call starts on every tick, whether or not earlier ones ended
            await asyncio.sleep(max(0.0, began + i * options.interval_ms / 1000 - loop.time()))
            tasks.append(asyncio.create_task(one()))
        calls = await asyncio.gather(*tasks)
        reached_server = a.count("/v1/chat/completions")
    tried = [c for c in calls if c[1]]
    cooled_at = cools[0] if cools else None
    after = [c for c in tried if cooled_at is not None and c[0] >= cooled_at]
    skipped_ms = [c[2] for c in calls if not c[1] and c[3]]
    return {
        "a_fails_with": f"hang past a {options.hang_timeout_s}s timeout" if hang else behaviour,
        "policy": policy.model_dump(),
        "calls": len(calls),
        "failed_calls": sum(1 for c in calls if not c[3]),
        "calls_reaching_a": reached_server,
        "calls_trying_a": len(tried),  # by the router's hops; above the server's count when a
        # call timed out before the loaded server read its request
        "first_cooldown_after_s": None if cooled_at is None else round(cooled_at - calls[0][0], 3),
        "calls_to_a_after_first_cooldown": len(after) if cooled_at is not None else None,
        "latency_while_a_cools": summary(skipped_ms) if skipped_ms else None,
    }


async def outages(options: Options) -> dict[str, Any]:
    """Each outage in turn (run together they would share one event loop and slow each other)."""
    results: dict[str, Any] = {}
    for behaviour in ("error_500", "hang"):
        for name, policy in (("default", Cooldown()), ("allowed_fails_2", Cooldown(allowed_fails=2))):
            results[f"{behaviour}/{name}"] = await outage(options, behaviour, policy)
    return results


# ------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "litellm": version("litellm"),
    }


async def bench(options: Options) -> dict[str, Any]:
    """Every figure of the benchmark, the goals, and whether each is met."""
    options.check()
    started = time.perf_counter()
    overhead = await routed_vs_bare(options)
    fallback = await fallback_after_429(options)
    cooled = await outages(options)
    after = [case["calls_to_a_after_first_cooldown"] for case in cooled.values()]
    within = GOALS["fallback_excess_p50_ms"]
    return {
        "machine": machine(),
        "options": asdict(options),
        "routed_vs_bare": overhead,
        "fallback_after_429": fallback,
        "outage": cooled,
        "goals": GOALS,
        "pass": {
            "routed_over_bare_p50": overhead["routed_over_bare_p50"] <= GOALS["routed_over_bare_p50"],
            "fallback_excess_from_429_p50_ms": fallback["excess_from_429_p50_ms"] <= within,
            "fallback_excess_whole_call_p50_ms": fallback["excess_whole_call_p50_ms"] <= within,
            "calls_to_a_after_first_cooldown": all(n == GOALS["calls_to_a_after_first_cooldown"] for n in after),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    defaults = Options()
    parser.add_argument("--calls", type=int, default=defaults.calls, help="routed and bare calls measured, each")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="pairs run first and not measured")
    parser.add_argument("--fallback-calls", type=int, default=defaults.fallback_calls)
    parser.add_argument("--outage-s", type=float, default=defaults.outage_s, help="simulated outage length")
    parser.add_argument("--interval-ms", type=float, default=defaults.interval_ms, help="a call starts every ...")
    parser.add_argument("--hang-timeout-s", type=float, default=defaults.hang_timeout_s, help="A's timeout (hang)")
    parser.add_argument("--profile", action="store_true", help="profile the routed path even when within goal")
    parser.add_argument("--profile-calls", type=int, default=defaults.profile_calls)
    options = Options(**vars(parser.parse_args(argv)))
    try:
        options.check()
    except SystemExit as exc:
        parser.error(str(exc))  # exit 2, with the usage
    return options


def main(argv: list[str] | None = None) -> None:
    report = asyncio.run(bench(parse(argv)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
