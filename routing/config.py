"""Routing as data: which deployments serve each alias, validated, as a UI and the CLI read and write it.

A ``RoutingConfig`` is what a run starts with and keeps. It holds no secret: a deployment names its
API key by reference (an environment variable or a stored secret), resolved only when a call is
made. ``RoutingLayer`` is one source's part of it (defaults, ``factory.toml``, the environment, the
routing store); the effective routing takes each alias from the highest layer that sets it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from routing.base import CHAT_ALIASES, Alias
from routing.providers_known import LOCAL_PROVIDER, known_provider

#: How a deployment is asked for structured output. ``auto``: the embedded grammar for the embedded
#: model, JSON schema where LiteLLM knows the model supports it, else JSON mode plus the schema in
#: the prompt.
Structured = Literal["auto", "json_schema", "json_object", "grammar"]
STRUCTURED_MODES: tuple[str, ...] = ("auto", "json_schema", "json_object", "grammar")

EMBEDDED = f"{LOCAL_PROVIDER}/smollm2"
SCRIPTED = f"{LOCAL_PROVIDER}/scripted"
MINILM = f"{LOCAL_PROVIDER}/minilm"
LOCAL_MODELS = (EMBEDDED, SCRIPTED)
MAX_CHAIN = 8  # deployments per alias: a fallback chain is bounded

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_SECRET = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_MODEL = re.compile(r"^[A-Za-z0-9_.-]+/[^\s\x00-\x1f\x7f]{1,200}$")


def looks_like_a_key(name: str) -> bool:
    """A variable or secret name that is more likely the key itself (long, mixed case and digits,
    no separator) than the name of where it is kept: refused without being quoted."""
    return len(name) >= 24 and "_" not in name and any(c.islower() for c in name) and any(c.isdigit() for c in name)


class KeyRef(BaseModel):
    """Where a deployment's API key is: an environment variable or a stored secret (never the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str | None = None
    secret: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeyRef:
        # Messages never quote the value: a key pasted where its name belongs must not be printed.
        if (self.env is None) == (self.secret is None):
            raise ValueError('a key reference names exactly one of env or secret: {env = "OPENAI_API_KEY"}')
        for kind, name in (("env", self.env), ("secret", self.secret)):
            if name is not None and looks_like_a_key(name):
                raise ValueError(f"key.{kind} looks like the key itself: give the NAME of where it is kept")
        if self.env is not None and not _NAME.match(self.env):
            raise ValueError("key.env must be an environment variable name (letters, digits, _), e.g. OPENAI_API_KEY")
        if self.secret is not None and not _SECRET.match(self.secret):
            raise ValueError("key.secret must be a secret name (letters, digits, _ . -); see `factory secrets list`")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"secret:{self.secret}"


def check_url(value: str, what: str = "api_base") -> str:
    """An http(s) base URL without credentials, query or fragment (the message never quotes it: a
    URL can carry a token)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or _CONTROL.search(value):
        raise ValueError(f"{what} must be an http(s) URL, e.g. http://gpu-box:8000/v1")
    if parts.username or parts.password:
        raise ValueError(f"{what} must hold no credentials (user:password@); give the key by reference")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must have no query or fragment; a key in it belongs in a key reference")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"{what} has a bad port") from exc
    return value.rstrip("/")


ApiBase = Annotated[str, Field(max_length=2048)]


class Deployment(BaseModel):
    """One concrete model behind an alias."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(max_length=256)  # LiteLLM model string: provider/name
    api_base: ApiBase | None = None
    key: KeyRef | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)  # caps a call's output tokens
    context_window: int | None = Field(default=None, ge=512, le=100_000_000)
    price_in_per_m: float | None = Field(default=None, ge=0, le=100_000)  # USD per million input tokens
    price_out_per_m: float | None = Field(default=None, ge=0, le=100_000)
    structured: Structured = "auto"

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        value = value.strip()
        if not _MODEL.match(value):
            raise ValueError(f"{value!r} is not provider/model, e.g. openai/gpt-4o or ollama_chat/qwen2.5")
        provider = value.split("/", 1)[0]
        if provider == LOCAL_PROVIDER:
            if value not in (*LOCAL_MODELS, MINILM):
                raise ValueError(f"{value!r}: the local models are {', '.join(LOCAL_MODELS)}")
        elif not known_provider(provider):
            raise ValueError(
                f"unknown provider {provider!r} in {value!r}; use one LiteLLM knows (openai, anthropic, ollama_chat,"
                " hosted_vllm, ...), or openai/<name> with --api-base for any OpenAI-compatible server"
            )
        return value

    @field_validator("api_base")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value.strip())

    @model_validator(mode="after")
    def _consistent(self) -> Deployment:
        if self.local and (self.api_base or self.key):
            raise ValueError(f"{self.model} runs in this process: it takes no api_base and no key")
        if self.structured == "grammar" and self.model != EMBEDDED:
            raise ValueError(
                f"structured = grammar is the embedded model's ({EMBEDDED}); use json_schema or json_object"
            )
        if self.provider == "hosted_vllm" and not self.api_base:
            raise ValueError(f"{self.model} needs --api-base (the vLLM server's URL, e.g. http://gpu-box:8000/v1)")
        return self

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def local(self) -> bool:
        """Runs in this process (the embedded or the scripted model): no network, no cost."""
        return self.provider == LOCAL_PROVIDER

    @property
    def grammar(self) -> bool:
        """Output constrained by a grammar (then the schema is enforced, not asked for)."""
        return self.model == EMBEDDED

    @property
    def ollama(self) -> bool:
        return self.provider in ("ollama", "ollama_chat")

    @property
    def id(self) -> str:
        """Names this deployment in cooldowns, ledgers and audit entries (no secret in it)."""
        return f"{self.model}@{self.api_base}" if self.api_base else self.model

    def public(self) -> dict[str, Any]:
        """What a run records of it: everything but unset fields (a key is only a reference)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {"model": self.model}


Chain = Annotated[list[Deployment], Field(min_length=1, max_length=MAX_CHAIN)]


class Cooldown(BaseModel):
    """When a failing deployment is skipped: after ``allowed_fails`` failures in a row beyond the
    first (LiteLLM's meaning), for ``cooldown_s`` — or for as long as a 429's Retry-After says."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_fails: int = Field(default=0, ge=0, le=100)
    cooldown_s: float = Field(default=60.0, ge=0, le=86_400)
    max_retry_after_s: float = Field(default=600.0, ge=0, le=86_400)


class RoutingLayer(BaseModel):
    """One source's routing: the aliases it sets (a chain replaces the lower one whole) and, if set,
    the cooldown policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[Alias, Chain] = Field(default_factory=dict)
    cooldown: Cooldown | None = None

    @field_validator("aliases", mode="before")
    @classmethod
    def _alias_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = [k for k in value if k not in CHAT_ALIASES]
            if unknown:
                raise ValueError(
                    f"unknown alias {', '.join(map(str, unknown))}; the aliases are {', '.join(CHAT_ALIASES)}"
                )
        return value


class RoutingConfig(BaseModel):
    """The effective routing: every chat alias's chain, in order, and the cooldown policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[Alias, Chain]
    cooldown: Cooldown = Field(default_factory=Cooldown)
    proxy: str | None = None  # set: every alias is served through this LiteLLM proxy

    @model_validator(mode="after")
    def _every_alias(self) -> RoutingConfig:
        missing = [a for a in CHAT_ALIASES if a not in self.aliases]
        if missing:
            raise ValueError(f"routing misses {', '.join(missing)}")
        return self

    def chain(self, alias: str) -> list[Deployment]:
        return list(self.aliases.get(alias, ()))  # type: ignore[call-overload]

    def public(self) -> dict[str, Any]:
        """What a run's ``run.created`` audit entry records: models, bases, key references (never keys)."""
        return {
            "aliases": {alias: [d.public() for d in chain] for alias, chain in self.aliases.items()},
            "cooldown": self.cooldown.model_dump(mode="json"),
            **({"proxy": self.proxy} if self.proxy else {}),
        }


class SourcedAlias(BaseModel):
    """One alias of ``routing show``: its chain and which source set it."""

    alias: Alias
    source: str  # default | factory.toml | environment | store v<N> | proxy
    chain: list[Deployment]


class RoutingChange(BaseModel):
    """One recorded change of the routing store: who set (or reset, ``chain`` None) what, when."""

    version: int
    target: str  # an alias, or "cooldown"
    chain: list[Deployment] | None = None
    cooldown: Cooldown | None = None
    changed_by: str
    changed_at: datetime
    #: Why a stored change no longer validates (e.g. a provider LiteLLM dropped); then it is skipped.
    invalid: str | None = None
