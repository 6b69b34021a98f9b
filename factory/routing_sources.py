"""Where routing comes from, lowest first (DESIGN §8; README "Model routing"):

1. ``default``: today's chains — OpenAI, then Anthropic when their key is set, then Ollama when
   ``OLLAMA_API_BASE`` is set, then the embedded model (the scripted model in tests);
2. ``factory.toml``: its ``[routing]`` table;
3. ``environment``: ``FACTORY_ROUTING``, the same table as JSON;
4. ``store vN``: the routing store in PostgreSQL that ``factory routing set|reset`` (and the chat)
   edit, each change versioned with who and when.

A higher source replaces the whole chain of each alias it sets; the cooldown policy is taken from the
highest source that sets one. ``FACTORY_LITELLM_PROXY_URL`` (proxy mode) then serves every alias
through that LiteLLM proxy.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from factory.errors import ConfigError
from factory.settings import Settings
from routing.aliases import default_layer
from routing.config import KeyRef, RoutingLayer
from routing.proxy_config import PROXY_KEY_ENV


def _key_env(*names: str) -> str | None:
    """The first of ``names`` set in the environment: the variable a default deployment's key is in."""
    return next((n for n in names if os.environ.get(n)), None)


def problems(exc: ValidationError) -> str:
    """A pydantic error as one line per problem, each saying where."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def parse_layer(data: Any, source: str) -> RoutingLayer:
    try:
        return RoutingLayer.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"the routing in {source} is invalid: {problems(exc)}") from exc


def toml_layer(path: Path) -> RoutingLayer | None:
    """The ``[routing]`` table of ``factory.toml``, if the file has one."""
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path} cannot be read as TOML: {exc}") from exc
    table = data.get("routing")
    return None if table is None else parse_layer(table, str(path))


def env_layer(text: str | None) -> RoutingLayer | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"FACTORY_ROUTING is not JSON ({exc.msg} at {exc.pos});"
            ' write e.g. {"aliases": {"factory/coder": [{"model": "ollama_chat/qwen2.5"}]}}'
        ) from exc
    return parse_layer(data, "FACTORY_ROUTING")


def base_layers(settings: Settings) -> list[tuple[str, RoutingLayer]]:
    """The layers below the store: defaults, factory.toml, environment."""
    try:
        default = default_layer(
            openai_key=_key_env("FACTORY_OPENAI_API_KEY", "OPENAI_API_KEY") if settings.openai_api_key else None,
            anthropic_key=_key_env("FACTORY_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
            if settings.anthropic_api_key
            else None,
            ollama_base=settings.ollama_api_base,
            ollama_model=settings.ollama_model,
            scripted=settings.scripted_model is not None,
        )
    except ValidationError as exc:  # settings are validated; this is a defect, said without the values
        raise ConfigError(f"the default routing cannot be built: {problems(exc)}") from exc
    layers = [("default", default)]
    if (toml := toml_layer(settings.config_file)) is not None:
        layers.append(("factory.toml", toml))
    if (env := env_layer(settings.routing_env)) is not None:
        layers.append(("environment", env))
    return layers


def proxy_key() -> KeyRef | None:
    return KeyRef(env=PROXY_KEY_ENV) if os.environ.get(PROXY_KEY_ENV) else None
