"""Cooldowns: a deployment that keeps failing is skipped for a while instead of paying its timeout
or its retries on every call (LiteLLM's Router never cools a single-deployment group unless
``allowed_fails`` is set; the factory's chain walker keeps its own, per deployment).

A deployment cools after more than ``allowed_fails`` failures in a row, for ``cooldown_s``, or, on a
429, for as long as its Retry-After asks (bounded). The first call after a cooldown is a probe: a
success clears the count, a failure cools it again. In-process models never cool: their failures
belong to the request (an over-long prompt), not to an outage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from routing.base import FallbackKind
from routing.config import Cooldown

#: Failures that say the deployment, not the request, is unwell.
COOLING_KINDS: frozenset[str] = frozenset(
    {"timeout", "rate_limit", "server_error", "connection", "auth", "bad_output", "no_key"}
)


@dataclass
class _State:
    fails: int = 0
    until: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Cooling:
    """One deployment in cooldown, as ``routing show`` lists it."""

    deployment: str
    left_s: float
    reason: str


#: Told when a deployment starts cooling: (deployment, seconds, reason).
OnCool = Callable[[str, float, str], None]


class Cooldowns:
    """Per-process cooldown book of every deployment this process called."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_cool: OnCool | None = None,
        on_clear: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_cool = on_cool
        self._on_clear = on_clear
        self._states: dict[str, _State] = {}

    def left(self, deployment: str) -> float:
        """Seconds ``deployment`` still cools (0 when it may be called)."""
        state = self._states.get(deployment)
        if state is None:
            return 0.0
        return max(0.0, state.until - self._clock())

    def failed(
        self,
        deployment: str,
        kind: FallbackKind,
        policy: Cooldown,
        *,
        retry_after_s: float | None = None,
        reason: str = "",
    ) -> float:
        """Count a failure; returns the seconds the deployment now cools (0: not cooling)."""
        if kind not in COOLING_KINDS:
            return 0.0
        state = self._states.setdefault(deployment, _State())
        state.fails += 1
        if kind == "rate_limit" and retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
            seconds = min(retry_after_s, policy.max_retry_after_s)  # the server said how long
        elif state.fails > policy.allowed_fails:
            seconds = policy.cooldown_s
        else:
            return 0.0
        if seconds <= 0:
            return 0.0
        state.until = self._clock() + seconds
        state.reason = f"{kind}: {reason}"[:300] if reason else kind
        if self._on_cool is not None:
            self._on_cool(deployment, seconds, state.reason)
        return seconds

    def succeeded(self, deployment: str) -> None:
        state = self._states.pop(deployment, None)
        if state is not None and state.until and self._on_clear is not None:
            self._on_clear(deployment)  # it had cooled: the mirror of it goes

    def soonest(self, deployments: list[str]) -> str | None:
        """Of ``deployments``, the one whose cooldown ends first."""
        return min(deployments, key=self.left, default=None)

    def cooling(self) -> list[Cooling]:
        now = self._clock()
        return [
            Cooling(deployment=name, left_s=round(state.until - now, 1), reason=state.reason)
            for name, state in sorted(self._states.items())
            if state.until > now
        ]
