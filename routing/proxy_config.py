"""Proxy mode: the routing as a LiteLLM proxy ``config.yaml`` (``factory routing export-litellm-config``).

The proxy then serves each alias with the same chain the factory walks in process:

- every deployment is a model group of its own: the alias itself for the first one, ``ALIAS~1``,
  ``ALIAS~2`` ... for the rest, each with ``model_info.id`` equal to its group (so the proxy's
  ``x-litellm-model-id`` header names the deployment that answered);
- ``router_settings.fallbacks`` sends a failed call on the alias through ``ALIAS~1``, ``ALIAS~2`` ...
  in chain order, with ``num_retries: 0`` (the chain is the retry, as in the factory's router);
- the cooldown policy becomes ``allowed_fails`` / ``cooldown_time``, and the same count for every
  error type in ``allowed_fails_policy``: LiteLLM cools a single-deployment group only when the
  router's ``allowed_fails`` differs from its global default (3) or a policy is set
  (../shared/STACK.md), and every group here has one deployment;
- keys stay references: ``api_key: os.environ/NAME`` (LiteLLM's own syntax, resolved by the proxy
  from its environment). A stored secret (``factory secrets``) cannot be handed to another process:
  it is exported as ``os.environ/FACTORY_SECRET_<NAME>``, which the operator exports for the proxy;
- prices per million tokens become ``input_cost_per_token`` / ``output_cost_per_token``; the proxy
  reports each call's cost (``x-litellm-response-cost``), which LiteLLM's client reads back, so the
  factory's ledger and budgets still see costs in proxy mode.

Not served by a proxy: the in-process models (``factory-local/...``, the embedded and the scripted
one) are left out of the chains. Not expressible without the proxy's database: per-team budgets
(LiteLLM keeps teams and their budgets in its PostgreSQL, reached through its admin API; budgets by
request tag are an enterprise feature). The exported ``factory`` section, which the proxy ignores,
records both, and the factory keeps enforcing its per-team and per-run budgets itself.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from factory.errors import ConfigError
from routing.config import MAX_CHAIN, Deployment, KeyRef, RoutingConfig

#: The environment variable holding the proxy's master key, for the proxy and the factory alike.
PROXY_KEY_ENV = "FACTORY_LITELLM_PROXY_KEY"
SECRET_ENV_PREFIX = "FACTORY_SECRET_"
#: The error types of LiteLLM's ``allowed_fails_policy``: every one gets the factory's one count.
_POLICY_FIELDS = (
    "BadRequestErrorAllowedFails",
    "AuthenticationErrorAllowedFails",
    "TimeoutErrorAllowedFails",
    "RateLimitErrorAllowedFails",
    "ContentPolicyViolationErrorAllowedFails",
    "InternalServerErrorAllowedFails",
    "ServiceUnavailableErrorAllowedFails",
    "BadGatewayErrorAllowedFails",
    "NotFoundErrorAllowedFails",
)
_HEADER = (
    "# LiteLLM proxy config exported by `factory routing export-litellm-config`.\n"
    "# Serve it: export the key variables named below (and LITELLM_LOCAL_MODEL_COST_MAP=True offline), then\n"
    "#   litellm --config THIS_FILE --port 4000\n"
    "# and point the factory at it: FACTORY_LITELLM_PROXY_URL=http://HOST:4000 FACTORY_LITELLM_PROXY_KEY=...\n"
    "# The `factory` section is for people: the proxy ignores it.\n"
)


def group_name(alias: str, index: int) -> str:
    """The proxy's model group of the ``index``-th served deployment of ``alias`` (0: the alias)."""
    return alias if index == 0 else f"{alias}~{index}"


def key_env(ref: KeyRef) -> str:
    """The environment variable the proxy reads the key from: the reference's own, or for a stored
    secret ``FACTORY_SECRET_<NAME>`` (upper case, ``.`` and ``-`` as ``_``)."""
    if ref.env:
        return ref.env
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", ref.secret or "").upper()


def litellm_params(deployment: Deployment) -> dict[str, Any]:
    """One deployment's ``litellm_params``: model, base, key reference, timeout, output cap, prices."""
    params: dict[str, Any] = {"model": deployment.model}
    if deployment.api_base:
        params["api_base"] = deployment.api_base
    if deployment.key is not None:
        params["api_key"] = f"os.environ/{key_env(deployment.key)}"
    if deployment.timeout_s is not None:
        params["timeout"] = deployment.timeout_s
    if deployment.max_tokens is not None:
        params["max_tokens"] = deployment.max_tokens
    if deployment.price_in_per_m is not None:
        params["input_cost_per_token"] = deployment.price_in_per_m / 1e6
    if deployment.price_out_per_m is not None:
        params["output_cost_per_token"] = deployment.price_out_per_m / 1e6
    return params


def _router_settings(config: RoutingConfig, fallbacks: list[dict[str, list[str]]]) -> dict[str, Any]:
    cooldown = config.cooldown
    settings: dict[str, Any] = {"num_retries": 0, "max_fallbacks": MAX_CHAIN, "fallbacks": fallbacks}
    if cooldown.cooldown_s <= 0:
        settings["disable_cooldowns"] = True
        return settings
    settings["allowed_fails"] = cooldown.allowed_fails
    settings["cooldown_time"] = cooldown.cooldown_s
    settings["allowed_fails_policy"] = dict.fromkeys(_POLICY_FIELDS, cooldown.allowed_fails)
    return settings


def _notes(
    left_out: dict[str, list[str]],
    unserved: list[str],
    secrets: list[str],
    json_mode: list[str],
    team_budget_usd: float | None,
    run_budget_usd: float | None,
) -> dict[str, Any]:
    """The ``factory`` section: what the proxy was not given, and why."""
    notes = [
        "Every alias is one model group per deployment: the alias, then ALIAS~1, ALIAS~2 ... tried in order"
        " through router_settings.fallbacks.",
        "In-process models (factory-local/...) cannot be served by a proxy and are left out of its chains.",
        "Per-team budgets: LiteLLM's proxy keeps teams and their budgets in its database (DATABASE_URL, teams"
        " created through /team/new with max_budget, one key per team) and budgets by request tag are an"
        " enterprise feature, so none is configured here; the factory enforces its own per-team and per-run"
        " budgets from the cost the proxy reports for every call.",
        "litellm_params.max_tokens is a default: a request's own max_tokens wins in LiteLLM's router.",
        "LiteLLM does not cool a deployment down for a refused connection (APIConnectionError); it falls back.",
    ]
    if json_mode:
        notes.append(
            "The factory asks the proxy for JSON-schema output; LiteLLM passes that on unchanged, also to "
            + ", ".join(json_mode)
            + " (structured = json_object, which the proxy has no setting for)."
        )
    if secrets:
        notes.append(
            "Stored secrets cannot be handed to another process: export "
            + ", ".join(secrets)
            + " for the proxy (`factory secrets` keeps the values)."
        )
    section: dict[str, Any] = {"notes": notes}
    if left_out:
        section["left_out_in_process"] = left_out
    if unserved:
        section["aliases_not_served"] = unserved
    budgets = {"team_usd_per_run": team_budget_usd, "run_usd": run_budget_usd}
    if any(v is not None for v in budgets.values()):
        section["budgets_enforced_by_factory"] = {k: v for k, v in budgets.items() if v is not None}
    return section


def litellm_config(
    config: RoutingConfig, *, team_budget_usd: float | None = None, run_budget_usd: float | None = None
) -> dict[str, Any]:
    """The LiteLLM proxy config serving ``config``'s aliases, chains, fallbacks and cooldowns.

    ``team_budget_usd`` / ``run_budget_usd`` (FACTORY_BUDGET_TEAM_USD / FACTORY_BUDGET_RUN_USD) are
    recorded in the ``factory`` section: the proxy cannot enforce them without its database.
    Raises ``ConfigError`` for a routing that is itself proxy mode, or that has nothing a proxy can serve.
    """
    if config.proxy:
        raise ConfigError(
            f"the routing is in proxy mode (FACTORY_LITELLM_PROXY_URL={config.proxy}): exporting it would make the"
            " proxy call itself; unset FACTORY_LITELLM_PROXY_URL for this command to export the chains it should serve"
        )
    model_list: list[dict[str, Any]] = []
    fallbacks: list[dict[str, list[str]]] = []
    left_out: dict[str, list[str]] = {}
    unserved: list[str] = []
    secrets: set[str] = set()
    secret_of: dict[str, str] = {}  # exported variable → the stored secret's name
    json_mode: list[str] = []
    for alias, chain in config.aliases.items():
        served = [d for d in chain if not d.local]
        if len(served) < len(chain):
            left_out[alias] = [d.model for d in chain if d.local]
        if not served:
            unserved.append(alias)
            continue
        groups = [group_name(alias, i) for i in range(len(served))]
        for group, deployment in zip(groups, served, strict=True):
            model_list.append(
                {"model_name": group, "litellm_params": litellm_params(deployment), "model_info": {"id": group}}
            )
            if deployment.key is not None and deployment.key.secret:
                variable = key_env(deployment.key)
                other = secret_of.setdefault(variable, deployment.key.secret)
                if other != deployment.key.secret:
                    raise ConfigError(
                        f"the stored secrets {other!r} and {deployment.key.secret!r} would both be exported as"
                        f" {variable}; rename one (`factory secrets set`) so the proxy can tell them apart"
                    )
                secrets.add(variable)
            if deployment.structured == "json_object":
                json_mode.append(group)
        if len(groups) > 1:
            fallbacks.append({alias: groups[1:]})
    if not model_list:
        raise ConfigError(
            "no alias has a deployment a LiteLLM proxy can serve (the in-process models run only inside the"
            " factory): route an alias to a provider first, e.g. `factory routing set coder openai/gpt-4o"
            " --key-env OPENAI_API_KEY`"
        )
    return {
        "model_list": model_list,
        "router_settings": _router_settings(config, fallbacks),
        "litellm_settings": {"drop_params": True, "num_retries": 0},
        "general_settings": {"master_key": f"os.environ/{PROXY_KEY_ENV}"},
        "factory": _notes(left_out, unserved, sorted(secrets), json_mode, team_budget_usd, run_budget_usd),
    }


def to_yaml(config: dict[str, Any]) -> str:
    """``config`` as the YAML file ``litellm --config`` reads, keys in the order given, with a header."""
    body: str = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)
    return _HEADER + body
