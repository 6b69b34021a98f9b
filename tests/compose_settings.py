"""The factory as compose.yaml configures it: ``Settings`` built from a service's environment (as the
container's process would build them) must point at the right services, and the LiteLLM proxy's
config exported by ``init`` must be what the proxy can serve (tests/unit/test_compose.py).

Like tests/compose_checks.py, each check returns its problems; they take pytest's ``monkeypatch``
because ``Settings`` reads the process environment, which is swapped for the service's.
"""

from __future__ import annotations

import os
import re
from urllib.parse import SplitResult, urlsplit

import pytest

from factory.errors import ConfigError, InputError
from factory.routing_sources import base_layers
from factory.settings import Settings
from factory.users import check_name
from routing.aliases import combine
from routing.proxy_config import litellm_config
from tests.compose_stack import Stack, command_option, is_bind, strings

#: Environment variables the factory reads: cleared before a service's own are set.
_READ_BY_FACTORY = ("FACTORY_", "LANGFUSE_", "OLLAMA_", "OPENAI_", "ANTHROPIC_")


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The ``Settings`` a process with exactly ``env`` (of what the factory reads) would build. The
    caller has changed into an empty directory, so no factory.toml is read."""
    for key in list(os.environ):
        if key.startswith(_READ_BY_FACTORY):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _url(secret: object) -> SplitResult | None:
    if secret is None:
        return None
    text = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    return urlsplit(text)


def _at(stack: Stack, what: str, url: SplitResult | None, service: str, port: int | None = None) -> list[str]:
    """``url`` reaches ``service`` on a port it listens on (``port``, when the service says which)."""
    if url is None:
        return [f"{what} is not set"]
    if url.hostname != service:
        return [f"{what} points at {url.hostname}, not the {service} service"]
    listening = {port} if port is not None else stack.container_ports(service)
    if url.port not in listening:
        return [f"{what} uses port {url.port}; {service} listens on {sorted(listening)}"]
    return []


def factory_settings_problems(stack: Stack, service: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The chat app or a worker: PostgreSQL only through PgBouncer with PostgreSQL's own credentials,
    Redis with its password, Ollama, the LiteLLM proxy with its master key, Langfuse with the project's
    keys, JSON logs, and the data dir on the volume the app and the workers share."""
    settings = settings_of(stack.environment(service), monkeypatch)
    where = f"{service}:"
    pgbouncer, postgres = stack.environment("pgbouncer"), stack.environment("postgres")
    db = _url(settings.database_url)
    problems = _at(stack, f"{where} the database URL", db, "pgbouncer", int(pgbouncer.get("LISTEN_PORT", "5432")))
    if pgbouncer.get("DB_HOST") != "postgres" or pgbouncer.get("POOL_MODE") != "transaction":
        problems.append("pgbouncer must pool the postgres service in transaction mode")
    if db is not None:
        given = (db.username, db.password, db.path.lstrip("/"))
        pooled = (pgbouncer.get("DB_USER"), pgbouncer.get("DB_PASSWORD"), pgbouncer.get("DB_NAME"))
        owned = (postgres.get("POSTGRES_USER"), postgres.get("POSTGRES_PASSWORD"), postgres.get("POSTGRES_DB"))
        if not given == pooled == owned:
            problems.append(
                f"{where} the database URL's user, password and database differ from pgbouncer's or postgres's"
            )
    redis = _url(settings.redis_url)
    problems += _at(stack, f"{where} the Redis URL", redis, "redis")
    redis_password = command_option(stack.services["redis"].get("command"), "--requirepass")
    if redis is not None and not redis.password == redis_password == stack.environment("redis").get("REDISCLI_AUTH"):
        problems.append(f"{where} the Redis URL's password is not the one redis requires")
    problems += _at(stack, f"{where} OLLAMA_API_BASE", _url(settings.ollama_api_base), "ollama")
    proxy_port = command_option(stack.services["litellm"].get("command"), "--port")
    proxy = _url(settings.litellm_proxy_url)
    problems += _at(stack, f"{where} the LiteLLM proxy URL", proxy, "litellm", int(proxy_port or 0))
    key = stack.environment(service).get("FACTORY_LITELLM_PROXY_KEY")
    if not key or key != stack.environment("litellm").get("FACTORY_LITELLM_PROXY_KEY"):
        problems.append(f"{where} FACTORY_LITELLM_PROXY_KEY is not the litellm service's master key")
    problems += _at(stack, f"{where} the Langfuse base URL", _url(settings.langfuse_base_url), "langfuse-web")
    web = stack.environment("langfuse-web")
    public, secret = settings.langfuse_public_key, settings.langfuse_secret_key
    if public is None or public.get_secret_value() != web.get("LANGFUSE_INIT_PROJECT_PUBLIC_KEY"):
        problems.append(f"{where} LANGFUSE_PUBLIC_KEY is not the key langfuse-web creates its project with")
    if secret is None or secret.get_secret_value() != web.get("LANGFUSE_INIT_PROJECT_SECRET_KEY"):
        problems.append(f"{where} LANGFUSE_SECRET_KEY is not the key langfuse-web creates its project with")
    if settings.log_format != "json":
        problems.append(f"{where} logs should be JSON lines (FACTORY_LOG_FORMAT=json)")
    if settings.secret_key is None:
        problems.append(f"{where} FACTORY_SECRET_KEY is not set: each container would make a key of its own")
    volumes = {target: source for source, target, _ in stack.mounts(service) if not is_bind(source)}
    if str(settings.data_dir) not in volumes:
        problems.append(f"{where} its data dir {settings.data_dir} is not on a named volume")
    return problems


def worker_metrics_problems(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each worker serves /metrics on an address Prometheus reaches, and shares the app's data volume."""
    settings = settings_of(stack.environment("worker"), monkeypatch)
    problems = []
    if settings.metrics_port == 0 or settings.metrics_port not in stack.container_ports("worker"):
        problems.append(f"worker: metrics port {settings.metrics_port} is not a port the worker exposes")
    if settings.metrics_host != "0.0.0.0":
        problems.append(f"worker: metrics on {settings.metrics_host} cannot be scraped from another container")
    app = {target: source for source, target, _ in stack.mounts("app")}
    worker = {target: source for source, target, _ in stack.mounts("worker")}
    if app.get(str(settings.data_dir)) is None or app.get(str(settings.data_dir)) != worker.get(str(settings.data_dir)):
        problems.append("app and worker must share the data dir's volume (the chat shows the bundles workers write)")
    return problems


def _script(stack: Stack, service: str) -> str:
    command = stack.raw["services"][service].get("command")
    return "\n".join(map(str, command)) if isinstance(command, list) else str(command or "")


def proxy_problems(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What init exports (with the routing of its environment and an empty routing store, as at the
    first start) is a config the proxy serves: every upstream is a service, every key variable it
    names reaches the proxy, and the file init writes is the file the proxy reads."""
    env = stack.environment("init")
    settings = settings_of(env, monkeypatch)
    if settings.litellm_proxy_url:
        return ["init: FACTORY_LITELLM_PROXY_URL is set: the export would refuse (the proxy would call itself)"]
    try:
        exported = litellm_config(combine(base_layers(settings))[0])
    except ConfigError as exc:
        return [f"init: the export fails: {exc}"]
    problems = []
    for entry in exported["model_list"]:
        base = entry["litellm_params"].get("api_base")
        if base:
            problems += _at(stack, f"the proxy's {entry['model_name']}", urlsplit(base), urlsplit(base).hostname or "")
    proxy_env = stack.environment("litellm")
    for _, text in strings(exported):
        if text.startswith("os.environ/"):
            name = text.removeprefix("os.environ/")
            if not proxy_env.get(name):
                problems.append(f"litellm: the exported config reads {name}, which the litellm service is not given")
            elif name in env and proxy_env[name] != env[name]:
                problems.append(f"litellm: {name} differs from the value init exported with")
    out = re.search(r"export-litellm-config --out (\S+)", _script(stack, "init"))
    read = command_option(stack.services["litellm"].get("command"), "--config")
    if out is None or read is None or _in_volume(stack, "init", out[1]) != _in_volume(stack, "litellm", read):
        problems.append("litellm: --config is not the file init exports (the same file of the same volume)")
    return problems


def _in_volume(stack: Stack, service: str, path: str) -> tuple[str, str] | None:
    """(named volume, path inside it) of ``path`` in ``service``."""
    for source, target, _ in stack.mounts(service):
        if not is_bind(source) and path.startswith(target.rstrip("/") + "/"):
            return source, path[len(target) :]
    return None


def first_operator_problems(stack: Stack) -> list[str]:
    """The chat on 0.0.0.0 refuses to start without an account: init creates the first one before the
    app starts, its password only through standard input, its name one the factory accepts."""
    problems = []
    script = _script(stack, "init")
    if not re.search(r"printf [^|\n]*\$\$FIRST_OPERATOR_PASSWORD[^|\n]*\|\s*factory users add", script):
        problems.append("init: the first operator's password must reach `factory users add` on standard input")
    if re.search(r"factory users add[^\n|]*FIRST_OPERATOR_PASSWORD", script):
        problems.append("init: the first operator's password is on a command line")
    app = stack.services["app"]
    if (app.get("depends_on") or {}).get("init", {}).get("condition") != "service_completed_successfully":
        problems.append("app: must start after init completed (no account, no chat on the network)")
    if command_option(app.get("command"), "--host") in (None, "127.0.0.1", "localhost"):
        problems.append("app: the chat must listen on 0.0.0.0 to be published from its container")
    try:
        check_name(stack.environment("init").get("FIRST_OPERATOR_NAME", ""))
    except InputError as exc:
        problems.append(f"init: FIRST_OPERATOR_NAME: {exc}")
    return problems
