"""Settings: environment variables (prefix ``FACTORY_``) over an optional ``factory.toml``.

This is the only module that reads configuration; everything below takes plain arguments.
Secrets (API keys, URLs with passwords) are ``SecretStr`` and never logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hitl.base import EscalationKind, Priority


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "factory"


class Settings(BaseSettings):
    """Every knob of the factory, with defaults that work on a fresh machine."""

    model_config = SettingsConfigDict(env_prefix="FACTORY_", extra="ignore", toml_file="factory.toml")

    data_dir: Path = Field(default_factory=_default_data_dir)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    #: ``json``: one JSON object a line (run, stage and team on every line that has them); ``text``: for a terminal.
    log_format: Literal["text", "json"] = "text"
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    redis_prefix: str = "factory:"
    ollama_api_base: str | None = Field(
        default=None, validation_alias=AliasChoices("FACTORY_OLLAMA_API_BASE", "OLLAMA_API_BASE")
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FACTORY_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FACTORY_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    secret_key: SecretStr | None = None  # FACTORY_SECRET_KEY: seals stored secrets; else <data_dir>/secret.key
    #: Ollama's model behind every alias when OLLAMA_API_BASE is set and no routing names another.
    ollama_model: str = "llama3.1"
    #: The routing of the environment layer: JSON like factory.toml's [routing] table
    #: ({"aliases": {"factory/coder": [{"model": "..."}]}, "cooldown": {...}}); see README "Model routing".
    routing_env: str | None = Field(default=None, validation_alias=AliasChoices("FACTORY_ROUTING"))
    #: Proxy mode: every alias is served through this LiteLLM proxy (its key in FACTORY_LITELLM_PROXY_KEY).
    litellm_proxy_url: str | None = None
    #: Test-only: a JSON script of model answers. Never a default; selecting it is explicit.
    scripted_model: Path | None = None

    # Gate (DESIGN §5)
    confidence_floor: float = Field(default=0.6, ge=0.0)
    retry_budget: int = Field(default=2, ge=0, le=10)
    iteration_cap: int = Field(default=6, ge=1, le=50)
    tool_rounds: int = Field(default=3, ge=0, le=10)  # tool calls a team may make per execution
    #: The embedded 135M model's tool rounds: it spent them on junk calls (a write_artifact named after
    #: the requirement, repeated recalls) at a model call each; memory packing gives it recall anyway.
    local_tool_rounds: int = Field(default=0, ge=0, le=10)
    # Verification gate (issue 19): each result's files checked by its team's tools before it commits.
    verify: bool = True  # FACTORY_VERIFY=false: no checks (results are taken on the model's word)
    #: FACTORY_SANDBOX_EXECUTE=false (e.g. in production): no team's code runs, even in the sandbox;
    #: static checks still run. True: each team's [sandbox] policy decides.
    sandbox_execute: bool = True
    #: A TOML file of sandbox policy overrides: a [default] table and tables named after teams, with
    #: the keys of a team's [sandbox] (execute, cpu_s, memory_mb, max_procs, output_kib, wall_s).
    sandbox_policy: Path | None = None
    check_revisions: int = Field(default=2, ge=0, le=10)  # revisions after failed checks, then the operator
    verify_timeout_s: float = Field(default=120.0, gt=0, le=3600)  # one check, then it is reported as hung
    # Clarification broker (DESIGN §6)
    clarify_max_per_objective: int = Field(default=3, ge=0, le=20)
    clarify_max_depth: int = Field(default=2, ge=1, le=5)
    clarify_reply_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    clarify_reply_ttl_s: int = Field(default=600, ge=10, le=86400)
    clarify_claim_idle_s: float = Field(default=30.0, gt=0, le=3600)
    clarify_stream_maxlen: int = Field(default=10_000, ge=10, le=10_000_000)  # unanswered requests kept per team
    clarify_responders: bool = True  # serve every team's clarifications inside `factory run`

    # Memory (DESIGN §7)
    memory_budget_tokens: int = Field(default=1500, ge=0, le=100_000)  # packed memory per stage prompt
    memory_extraction: Literal["auto", "model", "structured"] = "auto"  # auto: structured on the embedded model
    memory_dedupe_at: float = Field(default=0.92, gt=0.0, le=1.0)  # cosine at which items merge
    context_window_tokens: int = Field(default=32768, ge=1024)  # of routed (non-embedded) models

    # Budgets (DESIGN §8): unset is unlimited; a spent budget becomes a `budget` escalation
    budget_run_tokens: int | None = Field(default=None, ge=1)
    budget_run_usd: float | None = Field(default=None, gt=0)
    budget_team_tokens: int | None = Field(default=None, ge=1)  # per team, within one run
    budget_team_usd: float | None = Field(default=None, gt=0)  # per team, within one run

    # Human in the loop (DESIGN §9)
    sla_hours_critical: float = Field(default=1.0, gt=0)
    sla_hours_high: float = Field(default=4.0, gt=0)
    sla_hours_medium: float = Field(default=24.0, gt=0)
    sla_hours_low: float = Field(default=72.0, gt=0)
    sla_final_after_breach_hours: float = Field(default=2.0, ge=0)  # then the default action applies
    sla_auto_approve_low: bool = False  # the default action for `low` approvals at the final level
    #: What `factory hitl batch-approve` may decide: comma-separated kinds and priorities.
    hitl_low_risk_kinds: str = "approval"
    hitl_low_risk_priorities: str = "low"
    operator: str | None = None  # decided_by of CLI decisions; default: the OS user
    worker_poll_s: float = Field(default=2.0, gt=0, le=300)  # `factory worker`: SLA ladder and resumes
    #: How long a run's driver holds it without renewing (renewed every third of it); a driver
    #: stalled longer loses the run to the next `resume` or worker, and can commit nothing more.
    run_lease_ttl_s: float = Field(default=30.0, ge=1, le=3600)

    #: Runs one `factory worker` drives at once (each claimed from the run queue in PostgreSQL).
    worker_runs: int = Field(default=4, ge=1, le=64)
    #: Group-chat sessions one `factory worker` drives at once (handed over by the chat, or orphaned).
    worker_groupchats: int = Field(default=2, ge=1, le=64)
    #: Where `factory worker` serves Prometheus `/metrics` (0: not served); the chat app serves it at `/metrics`.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Tracing (Langfuse over OpenTelemetry): off unless both keys are set; nothing is sent otherwise
    langfuse_public_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FACTORY_LANGFUSE_PUBLIC_KEY", "LANGFUSE_PUBLIC_KEY")
    )
    langfuse_secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FACTORY_LANGFUSE_SECRET_KEY", "LANGFUSE_SECRET_KEY")
    )
    langfuse_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FACTORY_LANGFUSE_BASE_URL", "LANGFUSE_BASE_URL", "LANGFUSE_HOST"),
    )

    # Input limits
    max_requirement_bytes: int = Field(default=64 * 1024, ge=1)

    # The REST API and MCP server (`factory api`, mounted under /api by `factory up`)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8100, ge=0, le=65535)
    #: Requests one token may make per second on average, and in one burst (then 429 with Retry-After).
    api_rate_per_s: float = Field(default=20.0, gt=0, le=100_000)
    api_rate_burst: int = Field(default=40, ge=1, le=1_000_000)
    #: Request bodies over this many bytes are refused (413) before they are read or parsed.
    api_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: How often a front door (`factory api`, the chat) drives what can move while no worker is alive.
    sweep_s: float = Field(default=15.0, gt=0, le=3600)
    #: How long one live-event stream stays open; the client reconnects with Last-Event-ID and misses nothing.
    api_sse_max_s: float = Field(default=900.0, gt=0, le=86_400)
    #: Live-event streams one token may hold open at once, and the API process in all.
    api_sse_per_token: int = Field(default=16, ge=1, le=10_000)
    api_sse_total: int = Field(default=1000, ge=1, le=100_000)

    # Webhooks (`factory webhooks`; delivered by `factory worker`)
    #: Attempts of one delivery before it goes to the dead letter (`factory webhooks dead`, `replay`).
    webhook_attempts: int = Field(default=5, ge=1, le=50)
    #: Wait before the second attempt; doubled each attempt (with jitter), at most webhook_backoff_cap_s.
    webhook_backoff_s: float = Field(default=1.0, gt=0, le=3600)
    webhook_backoff_cap_s: float = Field(default=60.0, gt=0, le=86_400)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=120)  # one request, redirects included
    webhook_concurrency: int = Field(default=8, ge=1, le=256)  # requests in flight, per worker
    webhook_per_receiver: int = Field(default=2, ge=1, le=64)  # of them to one webhook
    webhook_poll_s: float = Field(default=1.0, gt=0, le=60)  # how often due retries are looked for
    webhook_log_days: float = Field(default=30.0, gt=0, le=3650)  # delivered rows kept in the log
    #: Let webhooks reach the factory's own network: loopback, private ranges, link-local (the cloud
    #: metadata service), CGNAT, `localhost`, `*.internal` …; off, such a URL is refused when added and
    #: a host resolving there is refused at each delivery (a receiver on this host or the LAN needs it on).
    webhook_allow_private: bool = False

    # Models
    model_timeout_s: float = Field(default=300.0, gt=0)
    local_model_ctx: int = Field(default=8192, ge=512)
    #: CPU threads of each local model (the embedded chat model, the embedding model); 0: every core.
    #: Several workers on one machine: cores / workers, else each one's models use every core.
    local_model_threads: int = Field(default=0, ge=0)
    local_model_seed: int = Field(default=42, ge=0)  # fixed, so a run on the embedded model is reproducible
    local_max_tokens: int = Field(default=700, ge=64)
    context_budget_chars: int = Field(default=6000, ge=500)

    # Services
    service_start_timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, os.environ.get("FACTORY_CONFIG", "factory.toml"))
        return (init_settings, env_settings, toml)

    @field_validator("ollama_api_base", "litellm_proxy_url")
    @classmethod
    def _base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        from routing.config import check_url

        name = "OLLAMA_API_BASE" if info.field_name == "ollama_api_base" else "FACTORY_LITELLM_PROXY_URL"
        return None if not value else check_url(value.strip(), name)

    @field_validator("ollama_model")
    @classmethod
    def _ollama_model(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,200}", value):
            raise ValueError("FACTORY_OLLAMA_MODEL must be an Ollama model name such as llama3.1 or qwen2.5:7b")
        return value

    @field_validator("hitl_low_risk_kinds", "hitl_low_risk_priorities")
    @classmethod
    def _known_names(cls, value: str, info: ValidationInfo) -> str:
        kinds = {EscalationKind.APPROVAL.value, EscalationKind.BUDGET.value}  # what an approval can decide
        allowed = kinds if info.field_name == "hitl_low_risk_kinds" else {p.value for p in Priority}
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(sorted(allowed))}")
        return ",".join(names)

    @property
    def config_file(self) -> Path:
        """The ``factory.toml`` this process reads (``FACTORY_CONFIG`` names another)."""
        return Path(os.environ.get("FACTORY_CONFIG", "factory.toml"))

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"
