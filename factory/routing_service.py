"""Governing model routing: show the effective chains and their sources, change them, test them.

One service for every front door (CLI now, chat settings next): it validates each change (an
unknown provider, a malformed URL, a missing key reference are refused with what to write instead),
records it in the routing store with who and when, and serves the current routing to new runs. A
running run keeps the routing it started with (``Run.routing``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from factory.errors import ConfigError, FactoryError, InputError
from factory.routing_sources import base_layers, problems, proxy_key
from factory.settings import Settings
from routing.aliases import combine
from routing.base import CHAT_ALIASES
from routing.config import Cooldown, Deployment, KeyRef, RoutingChange, RoutingConfig, RoutingLayer, SourcedAlias
from routing.cooldowns import Cooling
from routing.providers_known import LOCAL_PROVIDER
from routing.secrets import SecretStore
from routing.store import COOLDOWN, RoutingStore, layer_of

log = logging.getLogger(__name__)
_FRESH_S = 2.0  # how long the current routing is reused before the store is read again


def alias_name(text: str) -> str:
    """``coder`` or ``factory/coder`` → ``factory/coder``; anything else is refused."""
    name = text if "/" in text else f"factory/{text}"
    if name not in CHAT_ALIASES:
        raise InputError(f"unknown alias {text!r}; the aliases are {', '.join(CHAT_ALIASES)}")
    return name


def deployment(data: dict[str, Any], where: str) -> Deployment:
    try:
        return Deployment.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{where}: {problems(exc)}") from exc


class RoutingKeys:
    """Key references resolved: environment variables, and stored secrets (cached briefly, so a
    call costs no query; a changed secret applies within ``ttl_s``)."""

    def __init__(self, secrets: SecretStore | None, *, ttl_s: float = 30.0) -> None:
        self._secrets = secrets
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def resolve(self, ref: KeyRef) -> str | None:
        if ref.env:
            return os.environ.get(ref.env) or None
        if self._secrets is None or ref.secret is None:
            return None
        hit = self._cache.get(ref.secret)
        if hit is not None and time.monotonic() - hit[0] < self._ttl_s:
            return hit[1]
        value = await self._secrets.get(ref.secret)
        if value is not None:  # a missing one is asked again: it may be stored any moment
            self._cache[ref.secret] = (time.monotonic(), value)
        return value


@dataclass
class RoutingView:
    """The effective routing and where each part of it came from."""

    config: RoutingConfig
    aliases: list[SourcedAlias]
    cooldown_source: str
    version: int  # the store's latest change (0: never changed)
    cooling: list[Cooling] = field(default_factory=list)
    keys: dict[str, bool | None] = field(default_factory=dict)  # key reference → set? (None: unreadable)
    problems: list[str] = field(default_factory=list)  # what could not be read, and what to do

    def as_json(self) -> dict[str, Any]:
        def entry(d: Deployment) -> dict[str, Any]:
            out = d.public()
            if d.key is not None:
                out["key"] = {**d.key.model_dump(exclude_none=True), "present": self.keys.get(d.key.describe(), False)}
            cooling = next((c for c in self.cooling if c.deployment == d.id), None)
            if cooling is not None:
                out["cooling"] = {"left_s": cooling.left_s, "reason": cooling.reason}
            return out

        return {
            "version": self.version,
            "aliases": [
                {"alias": a.alias, "source": a.source, "chain": [entry(d) for d in a.chain]} for a in self.aliases
            ],
            "cooldown": {**self.config.cooldown.model_dump(mode="json"), "source": self.cooldown_source},
            "proxy": self.config.proxy,
            "cooling": [c.__dict__ for c in self.cooling],
            "problems": self.problems,
        }


class RoutingService:
    def __init__(
        self,
        settings: Settings,
        store: RoutingStore,
        keys: RoutingKeys,
        *,
        redis: Redis | None = None,
        prefix: str = "factory:",
    ) -> None:
        self._settings = settings
        self._store = store
        self._keys = keys
        self._redis = redis
        self._prefix = prefix
        self._current: tuple[float, RoutingConfig] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- reading -------------------------------------------------------------------------------

    async def effective(
        self, latest: list[RoutingChange] | None = None
    ) -> tuple[RoutingConfig, list[SourcedAlias], str, int]:
        """The effective routing from the layers and the store alone (no key resolved, no Redis read):
        (config, each alias's source, the cooldown policy's source, the store's version). ``latest``:
        the store's latest changes, when the caller read them already."""
        latest = await self._store.latest() if latest is None else latest
        layer, origins = layer_of(latest)
        labels = {
            target: f"store v{c.version} by {c.changed_by} at {c.changed_at:%Y-%m-%d %H:%M}Z"
            for target, c in origins.items()
        }
        # Each alias of the store layer is labelled with the change it comes from.
        store_layers = [(labels[a], RoutingLayer(aliases={a: chain})) for a, chain in layer.aliases.items()]
        if layer.cooldown is not None:
            store_layers.append((labels[COOLDOWN], RoutingLayer(cooldown=layer.cooldown)))
        try:
            config, sourced, cooldown_source = combine(
                [*base_layers(self._settings), *store_layers],
                proxy=self._settings.litellm_proxy_url,
                proxy_key=proxy_key(),
            )
        except ValidationError as exc:
            raise ConfigError(f"the routing cannot be combined: {problems(exc)}") from exc
        return config, sourced, cooldown_source, max((c.version for c in latest), default=0)

    async def view(self) -> RoutingView:
        """``effective`` with whether each key is set and the cooldowns every process mirrored: what
        ``routing show`` and doctor print. A key that cannot be read, or Redis down, is said, not fatal."""
        latest = await self._store.latest()
        config, sourced, cooldown_source, version = await self.effective(latest)
        refs = {d.key for chain in config.aliases.values() for d in chain if d.key is not None}
        keys: dict[str, bool | None] = {}
        problems_: list[str] = []
        for ref in refs:
            try:
                keys[ref.describe()] = bool(await self._keys.resolve(ref))
            except FactoryError as exc:
                keys[ref.describe()] = None
                problems_.append(f"{ref.describe()}: {exc}")
        try:
            cooling = await self.cooling()
        except (RedisError, OSError) as exc:
            cooling = []
            problems_.append(f"cooldowns cannot be read from Redis ({type(exc).__name__})")
        for c in latest:
            if c.invalid:
                which = "" if c.target == COOLDOWN else f" {c.target}"
                problems_.append(
                    f"store v{c.version} ({c.target}) no longer validates ({c.invalid}); lower sources serve it"
                    f" until `factory routing reset{which}` or a new `routing set`"
                )
        return RoutingView(
            config=config, aliases=sourced, cooldown_source=cooldown_source, version=version, cooling=cooling,
            keys=keys, problems=problems_,
        )  # fmt: skip

    async def current(self) -> RoutingConfig:
        """The routing new runs start with (reread from the store at most every two seconds)."""
        now = time.monotonic()
        if self._current is None or now - self._current[0] > _FRESH_S:
            self._current = (now, (await self.effective())[0])
        return self._current[1]

    async def public(self) -> dict[str, Any]:
        """What a new run records: the current routing without secrets."""
        return (await self.current()).public()

    # -- changing ------------------------------------------------------------------------------

    async def set(self, alias: str, chain: list[Deployment], *, by: str) -> RoutingChange:
        name = alias_name(alias)
        if not chain:
            raise InputError("give at least one model, e.g. `factory routing set coder ollama_chat/qwen2.5`")
        missing = [d.key.describe() for d in chain if d.key is not None and not await self._keys.resolve(d.key)]
        if missing:
            raise InputError(
                f"key {', '.join(missing)} is not set: export the variable, or store it with"
                " `factory secrets set NAME` and give --key-secret NAME"
            )
        change = await self._store.change(name, chain=chain, by=by)
        self._current = None
        return change

    async def set_cooldown(self, cooldown: Cooldown, *, by: str) -> RoutingChange:
        change = await self._store.change(COOLDOWN, cooldown=cooldown, by=by)
        self._current = None
        return change

    async def reset(self, alias: str | None, *, by: str) -> list[RoutingChange]:
        """Remove the store's chain of ``alias`` (of every alias and the cooldown policy: None)."""
        targets = [alias_name(alias)] if alias else [*CHAT_ALIASES, COOLDOWN]
        set_now = {
            c.target for c in await self._store.latest() if c.chain is not None or c.cooldown is not None or c.invalid
        }
        changes = [await self._store.change(t, by=by) for t in targets if t in set_now]
        self._current = None
        return changes

    async def history(self, limit: int = 20) -> list[RoutingChange]:
        return await self._store.history(limit)

    # -- cooldowns, shared through Redis so `routing show` sees every process's -------------------

    def cooled(self, deployment: str, seconds: float, reason: str) -> None:
        """``Cooldowns.on_cool``: mirror a new cooldown to Redis (best effort, in the background)."""
        value = json.dumps({"reason": reason, "until": time.time() + seconds})
        self._mirror(deployment, lambda redis, key: redis.set(key, value, px=max(1, int(seconds * 1000))))

    def recovered(self, deployment: str) -> None:
        """``Cooldowns.on_clear``: the deployment answered again; its mirrored cooldown goes."""
        self._mirror(deployment, lambda redis, key: redis.delete(key))

    def _mirror(self, deployment: str, command: Callable[[Redis, str], Awaitable[Any]]) -> None:
        if self._redis is None:
            return
        redis, key = self._redis, f"{self._prefix}routing:cooldown:{deployment}"

        async def mirror() -> None:
            await command(redis, key)

        try:
            task = asyncio.get_running_loop().create_task(mirror())
        except RuntimeError:  # no loop (a synchronous caller): the local cooldown still holds
            return
        self._tasks.add(task)  # kept until done (a task nobody references may be collected)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a Redis hiccup loses only the mirror
            log.info("cooldown mirror not written: %s", task.exception())

    async def cooling(self) -> list[Cooling]:
        if self._redis is None:
            return []
        found = []
        pattern = f"{self._prefix}routing:cooldown:*"
        async for key in self._redis.scan_iter(match=pattern, count=100):
            raw = await self._redis.get(key)
            try:
                data = json.loads(raw) if raw is not None else {}
                until, reason = float(data["until"]), str(data["reason"])
            except (ValueError, TypeError, KeyError):  # gone meanwhile, or not ours: skipped
                continue
            name = (key.decode() if isinstance(key, bytes) else key).removeprefix(f"{self._prefix}routing:cooldown:")
            found.append(Cooling(deployment=name, left_s=round(until - time.time(), 1), reason=reason[:300]))
        return sorted(found, key=lambda c: c.deployment)


def spread(values: list[str] | None, models: list[str], what: str) -> list[str | None]:
    """One value per model: an option given once applies to every model that is not in-process;
    given once per model it applies in order (``-`` for none)."""
    if not values:
        return [None] * len(models)
    if len(values) == 1:
        return [None if m.startswith(f"{LOCAL_PROVIDER}/") else values[0] for m in models]
    if len(values) == len(models):
        return [None if v in ("-", "") else v for v in values]
    raise InputError(
        f"--{what} was given {len(values)} times for {len(models)} models: give it once (for every model)"
        f" or once per model, in order ('-' for none)"
    )


def chain_of(
    models: str,
    api_base: list[str] | None,
    key_env: list[str] | None,
    key_secret: list[str] | None,
    timeout: list[str] | None,
    max_tokens: list[str] | None,
    context_window: list[str] | None,
    price_in: list[str] | None,
    price_out: list[str] | None,
    structured: list[str] | None,
) -> list[Deployment]:
    """The deployments ``routing set`` (and the chat's settings panel) describe, validated
    (``InputError`` says what to write)."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise InputError("give at least one model, e.g. `factory routing set coder ollama_chat/qwen2.5`")
    options = {
        "api_base": spread(api_base, names, "api-base"),
        "env": spread(key_env, names, "key-env"),
        "secret": spread(key_secret, names, "key-secret"),
        "timeout_s": spread(timeout, names, "timeout"),
        "max_tokens": spread(max_tokens, names, "max-tokens"),
        "context_window": spread(context_window, names, "context-window"),
        "price_in_per_m": spread(price_in, names, "price-in"),
        "price_out_per_m": spread(price_out, names, "price-out"),
        "structured": spread(structured, names, "structured"),
    }
    chain = []
    for i, name in enumerate(names):
        data: dict[str, Any] = {"model": name}
        env, secret = options["env"][i], options["secret"][i]
        if env and secret:
            raise InputError(f"{name}: give its key as --key-env or --key-secret, not both")
        if env or secret:
            data["key"] = {"env": env} if env else {"secret": secret}
        for option in ("api_base", "timeout_s", "max_tokens", "context_window", "price_in_per_m", "price_out_per_m"):
            if options[option][i] is not None:
                data[option] = options[option][i]
        if options["structured"][i] is not None:
            data["structured"] = options["structured"][i]
        chain.append(deployment(data, f"model {i + 1} ({name})"))
    return chain
