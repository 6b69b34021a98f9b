"""The settings panel's governance part: each alias's model chain, API keys, and the run policy
(confidence floor, budgets, clarification limits). Changes go through the same services and rules
as the CLI (``RoutingService.set`` with ``chain_of``, the secret store, ``PolicyService``), are
stored (versioned, with who), and apply to runs started afterwards. An API key typed here goes
straight to the encrypted store and is wiped from the session before anything can persist it; it
is never echoed, logged or sent back to the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chainlit.input_widget import InputWidget, TextInput

from factory.errors import FactoryError, InputError
from factory.policy import FIELDS, LABELS
from factory.routing_service import chain_of
from factory.wiring import Factory
from routing.base import CHAT_ALIASES
from routing.config import RoutingConfig

SECRET_NAME, SECRET_VALUE = "secret_name", "secret_value"
BUDGETS = ("budget_run_tokens", "budget_run_usd", "budget_team_tokens", "budget_team_usd")


def _alias_fields(config: RoutingConfig, alias: str) -> tuple[str, str, str]:
    chain = config.chain(alias)
    models = ",".join(d.model for d in chain)
    base = next((d.api_base for d in chain if d.api_base), "") or ""
    secret = next((d.key.secret for d in chain if d.key is not None and d.key.secret), "") or ""
    return models, base, secret


def _text(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


async def widgets(f: Factory) -> tuple[list[InputWidget], dict[str, str]]:
    """The governance widgets with the current values, and those values (to tell what changed)."""
    config = await f.routing.current()
    policy = await f.policy.current()
    shown: dict[str, str] = {}
    items: list[InputWidget] = []
    for alias in CHAT_ALIASES:
        models, base, secret = _alias_fields(config, alias)
        shown |= {f"models:{alias}": models, f"base:{alias}": base, f"key:{alias}": secret}
        items += [
            TextInput(id=f"models:{alias}", label=f"{alias}: models in fallback order", initial=models,
                      description="LiteLLM model strings, comma separated, e.g. openai/gpt-4o,factory-local/smollm2"),
            TextInput(id=f"base:{alias}", label=f"{alias}: API base (for every model not in-process)", initial=base),
            TextInput(id=f"key:{alias}", label=f"{alias}: stored key name (empty: none)", initial=secret),
        ]  # fmt: skip
    items += [
        TextInput(id=SECRET_NAME, label="Store an API key: its name", initial="", placeholder="OPENAI"),
        TextInput(id=SECRET_VALUE, label="…and the key (stored encrypted, never shown again)", initial=""),
    ]
    for name in FIELDS:
        shown[name] = _text(policy[name])
        items.append(TextInput(id=name, label=LABELS[name], initial=shown[name]))
    return items, shown


@dataclass
class Applied:
    """What a settings update changed, and what it refused (each with the reason)."""

    changed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(self.changed or self.refused)


def wipe_secret(values: dict[str, Any], *stores: dict[str, Any]) -> str:
    """Take the typed key out of ``values`` and every store of the session's settings."""
    secret = str(values.get(SECRET_VALUE) or "")
    for store in (values, *stores):
        if SECRET_VALUE in store:
            store[SECRET_VALUE] = ""
    return secret


def governance_changed(values: dict[str, Any], shown: dict[str, str], secret: str) -> bool:
    return bool(secret) or any(str(values.get(k) or "").strip() != v for k, v in shown.items())


async def apply(f: Factory, values: dict[str, Any], shown: dict[str, str], secret: str, *, by: str) -> Applied:
    """Store what changed; each part on its own, so one refusal loses none of the others."""
    done = Applied()
    name = str(values.get(SECRET_NAME) or "").strip()
    if secret:
        try:
            if not name:
                raise InputError("give the key a name (e.g. OPENAI) to store it under")
            await f.secrets.put(name, secret.strip(), by=by)
            done.changed.append(f"API key {name} stored, encrypted (use it as the stored key name of an alias)")
        except FactoryError as exc:
            done.refused.append(f"API key not stored: {exc}")
    for alias in CHAT_ALIASES:
        fields = [f"models:{alias}", f"base:{alias}", f"key:{alias}"]
        typed = [str(values.get(k) or "").strip() for k in fields]
        if typed == [shown[k] for k in fields]:
            continue
        models, base, key = typed
        try:
            chain = chain_of(models, [base] if base else None, None, [key] if key else None,
                             None, None, None, None, None, None)  # fmt: skip
            change = await f.routing.set(alias, chain, by=by)
            done.changed.append(f"{alias}: {' -> '.join(d.id for d in chain)} (routing store v{change.version})")
        except FactoryError as exc:
            done.refused.append(f"{alias} not changed: {exc}")
    policy = {}
    for key in FIELDS:
        typed_value = str(values.get(key) or "").strip()
        if typed_value != shown[key]:
            policy[key] = None if (typed_value == "" and key in BUDGETS) else typed_value
    if policy:
        version, now, refused = await f.policy.set_each(policy, by=by)
        if version is not None:
            listed = ", ".join(f"{k} = {_text(now[k]) or 'none'}" for k in policy if k not in refused)
            done.changed.append(f"run policy v{version}: {listed}")
        done.refused += [f"{k} not changed ({values.get(k)!r}): {why}" for k, why in refused.items()]
    return done
