"""``factory routing show|set|reset|cooldown|history|test|models|export-litellm-config`` (issue 14).

Every change is validated before anything starts (exit 2 with what to write instead), recorded in the
routing store with who and when, and applies to runs started afterwards; a running run keeps the
routing it started with. Keys are named by reference; no command prints a key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from factory.cli_common import EXIT_FAILED, EXIT_INPUT, echo, err, load_settings, print_json, who_decides, with_factory

if TYPE_CHECKING:
    from factory.wiring import Factory

routing_app = typer.Typer(no_args_is_help=True, help="Which models serve each alias: show, change, test.")

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
By = Annotated[str | None, typer.Option("--by", help="Who changes it (default: FACTORY_OPERATOR, else your user).")]
Many = list[str] | None


def _input(fn: Any, *args: Any) -> Any:
    """``fn(*args)``; a refusal (``InputError``) exits 2 with its message before anything starts."""
    from factory.errors import InputError

    try:
        return fn(*args)
    except InputError as exc:
        err(str(exc), exc.exit_code)


def _show_text(view: dict[str, Any]) -> None:
    echo(f"routing (store version {view['version']}; cooldown: {view['cooldown']['allowed_fails']} allowed fails,"
         f" {view['cooldown']['cooldown_s']:g}s, from {view['cooldown']['source']})")  # fmt: skip
    if view["proxy"]:
        echo(f"proxy mode: every alias through {view['proxy']}")
    for alias in view["aliases"]:
        echo(f"{alias['alias']}  ({alias['source']})")
        for n, d in enumerate(alias["chain"], start=1):
            parts = [d["model"]]
            if "api_base" in d:
                parts.append(f"at {d['api_base']}")
            if "key" in d:
                ref = f"env:{d['key']['env']}" if "env" in d["key"] else f"secret:{d['key']['secret']}"
                state = {True: "set", False: "NOT SET", None: "UNREADABLE"}[d["key"]["present"]]
                parts.append(f"key {ref} ({state})")
            extras = [f"{k}={d[k]}" for k in ("timeout_s", "max_tokens", "context_window", "structured") if k in d]
            extras += [
                f"${d[k]:g}/M {label}" for k, label in (("price_in_per_m", "in"), ("price_out_per_m", "out")) if k in d
            ]
            if "cooling" in d:
                extras.append(f"COOLING {d['cooling']['left_s']:g}s ({d['cooling']['reason']})")
            echo(f"  {n}. " + " ".join(parts) + (f"  [{', '.join(extras)}]" if extras else ""))
    for problem in view.get("problems", []):
        echo(f"WARNING {problem}")


@routing_app.command("show")
def routing_show(as_json: AsJson = False) -> None:
    """The effective chain of every alias, where each came from, cooldowns, and whether keys are set."""

    async def go(factory: Factory) -> dict[str, Any]:
        return (await factory.routing.view()).as_json()

    view = with_factory(go)
    if as_json:
        print_json(view)
    else:
        _show_text(view)


@routing_app.command("set")
def routing_set(
    alias: Annotated[str, typer.Argument(help="factory/architect|coder|fast|cheap (or just coder).")],
    models: Annotated[
        str, typer.Argument(help="MODEL[,MODEL...] in fallback order, e.g. openai/gpt-4o,ollama_chat/qwen2.5")
    ],
    api_base: Annotated[
        Many, typer.Option("--api-base", help="The server's URL (once for all, or once per model).")
    ] = None,
    key_env: Annotated[Many, typer.Option("--key-env", help="Environment variable holding the key.")] = None,
    key_secret: Annotated[
        Many, typer.Option("--key-secret", help="Stored secret holding the key (factory secrets set).")
    ] = None,
    timeout: Annotated[Many, typer.Option("--timeout", help="Seconds per call before falling back.")] = None,
    max_tokens: Annotated[Many, typer.Option("--max-tokens", help="Cap on output tokens per call.")] = None,
    context_window: Annotated[
        Many, typer.Option("--context-window", help="The model's context window in tokens.")
    ] = None,
    price_in: Annotated[
        Many, typer.Option("--price-in", help="USD per million input tokens (models LiteLLM does not price).")
    ] = None,
    price_out: Annotated[Many, typer.Option("--price-out", help="USD per million output tokens.")] = None,
    structured: Annotated[Many, typer.Option("--structured", help="auto|json_schema|json_object|grammar.")] = None,
    by: By = None,
) -> None:
    """Set the chain of one alias (replaces the lower sources' chain for it; new runs use it)."""
    from factory.routing_service import alias_name, chain_of

    name = _input(alias_name, alias)
    chain = _input(
        chain_of, models, api_base, key_env, key_secret, timeout, max_tokens, context_window, price_in, price_out,
        structured,
    )  # fmt: skip
    settings = load_settings()
    who = who_decides(settings, by)

    async def go(factory: Factory) -> int:
        return (await factory.routing.set(name, chain, by=who)).version

    version = with_factory(go, settings)
    echo(
        f"{name}: {' -> '.join(d.id for d in chain)} (store version {version}, by {who}); runs started from now use it"
    )


@routing_app.command("reset")
def routing_reset(
    alias: Annotated[
        str | None, typer.Argument(help="One alias; none resets every alias and the cooldown policy.")
    ] = None,
    by: By = None,
) -> None:
    """Drop the store's chain of an alias (or all): the alias falls back to factory.toml, environment, defaults."""
    from factory.routing_service import alias_name

    name = _input(alias_name, alias) if alias else None
    settings = load_settings()
    who = who_decides(settings, by)

    async def go(factory: Factory) -> list[str]:
        return [c.target for c in await factory.routing.reset(name, by=who)]

    reset = with_factory(go, settings)
    echo(f"reset {', '.join(reset)}" if reset else "nothing to reset: the store sets no routing")


@routing_app.command("cooldown")
def routing_cooldown(
    allowed_fails: Annotated[
        int, typer.Option("--allowed-fails", min=0, max=100, help="Failures in a row tolerated.")
    ] = 0,
    cooldown_s: Annotated[
        float, typer.Option("--cooldown-s", min=0, max=86400, help="Seconds a failing deployment is skipped.")
    ] = 60.0,
    by: By = None,
) -> None:
    """Set the cooldown policy: after more than N failures in a row a deployment is skipped for S seconds."""
    from routing.config import Cooldown

    if not math.isfinite(cooldown_s):
        err("--cooldown-s must be a number of seconds from 0 to 86400", EXIT_INPUT)
    settings = load_settings()
    who = who_decides(settings, by)
    policy = Cooldown(allowed_fails=allowed_fails, cooldown_s=cooldown_s)

    async def go(factory: Factory) -> int:
        return (await factory.routing.set_cooldown(policy, by=who)).version

    version = with_factory(go, settings)
    echo(f"cooldown: {allowed_fails} allowed fails, {cooldown_s:g}s (store version {version}, by {who})")


@routing_app.command("history")
def routing_history(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20, as_json: AsJson = False
) -> None:
    """The routing store's changes, newest first: what, who, when."""

    async def go(factory: Factory) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json", exclude_none=True) for c in await factory.routing.history(limit)]

    changes = with_factory(go)
    if as_json:
        print_json(changes)
        return
    for c in changes:
        what = (
            " -> ".join(d["model"] for d in c["chain"]) if "chain" in c else
            f"cooldown {c['cooldown']}" if "cooldown" in c else "reset"
        )  # fmt: skip
        echo(f"v{c['version']}  {c['changed_at'][:19]}Z  {c['changed_by']}  {c['target']}: {what}")


@routing_app.command("test")
def routing_test(
    alias: Annotated[str | None, typer.Argument(help="One alias; none tests every deployment of every alias.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=600, help="Seconds per deployment.")] = 30.0,
    as_json: AsJson = False,
) -> None:
    """One tiny real call per deployment: reachable, latency, structured output accepted. Exit 1 if any fails."""
    from factory.routing_service import alias_name

    if not math.isfinite(timeout):
        err("--timeout must be a number of seconds from 0.1 to 600", EXIT_INPUT)
    names = [_input(alias_name, alias)] if alias else None

    async def go(factory: Factory) -> list[dict[str, Any]]:
        from routing.probe import probe

        if factory.router is None:
            raise RuntimeError("routing test needs the factory's own router")
        config = await factory.routing.current()
        seen: dict[str, dict[str, Any]] = {}
        out = []
        for name in names or list(config.aliases):
            for d in config.chain(name):
                if d.id not in seen:  # one call per deployment, however many aliases share it
                    seen[d.id] = await probe(factory.router, d, timeout_s=d.timeout_s or timeout)
                out.append({"alias": name, **seen[d.id]})
        return out

    results = with_factory(go)
    if as_json:
        print_json(results)
    else:
        for r in results:
            state = "ok" if r["ok"] else ("answered, but not the requested JSON" if r["reachable"] else "UNREACHABLE")
            detail = f" ({r.get('kind', '')}: {r['error']})" if r.get("error") else ""
            mode = f" [{r['mode']}]" if r.get("mode") else ""
            echo(f"{r['alias']}  {r['deployment']}{mode}: {state} in {r['latency_ms']:g} ms{detail}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(EXIT_FAILED)


@routing_app.command("models")
def routing_models(as_json: AsJson = False) -> None:
    """What each configured Ollama server has pulled, and which configured models it lacks."""

    async def go(factory: Factory) -> list[dict[str, Any]]:
        from routing.ollama_models import ollama_servers

        config = await factory.routing.current()
        servers = await ollama_servers(
            config, factory.settings.ollama_api_base, timeout_s=factory.settings.connect_timeout_s
        )
        return [s.__dict__ for s in servers]

    servers = with_factory(go)
    if as_json:
        print_json(servers)
        return
    if not servers:
        echo(
            "no Ollama server is configured: set OLLAMA_API_BASE, or route an alias to ollama_chat/NAME --api-base URL"
        )
    for s in servers:
        if s["error"]:
            echo(f"{s['base']}: unreachable ({s['error']}); start it with `ollama serve`")
            continue
        echo(f"{s['base']}: {len(s['models'])} model(s)")
        for m in s["models"]:
            echo(f"  {m['name']}  {int(m['size'] or 0) / 1e9:.1f} GB")
        for name in s["missing"]:
            echo(f"  MISSING {name}: configured but not pulled; run `ollama pull {name}`")
    if any(s["error"] or s["missing"] for s in servers):
        raise typer.Exit(EXIT_FAILED)


@routing_app.command("export-litellm-config")
def routing_export(
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of standard output.")] = None,
) -> None:
    """A LiteLLM proxy config.yaml with the same aliases, chains, fallbacks and budgets (proxy mode)."""
    from routing.proxy_config import litellm_config, to_yaml

    async def go(factory: Factory) -> Any:
        settings = factory.settings
        return litellm_config(
            await factory.routing.current(),
            team_budget_usd=settings.budget_team_usd,
            run_budget_usd=settings.budget_run_usd,
        )

    config: dict[str, Any] = with_factory(go)
    text = to_yaml(config)
    if out is None:
        echo(text, lines=True)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        err(f"cannot write {out}: {exc.strerror}; choose another --out", EXIT_INPUT)
    echo(f"wrote {out}; serve it with `litellm --config {out}` and set FACTORY_LITELLM_PROXY_URL")
