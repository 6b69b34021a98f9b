"""Wiring of the verification gate (issue 19): the sandbox, the scratch database and the verifier."""

from __future__ import annotations

import tempfile
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from factory.errors import InputError
from factory.settings import Settings

if TYPE_CHECKING:
    from teams.verification import Verifier
    from verify.base import SandboxPolicy


def verifier(settings: Settings, database_url: str) -> Verifier | None:
    """The verification gate's checker as the settings want it; None when FACTORY_VERIFY is off.

    Without bubblewrap the checks that run code are reported as not run (never run bare); the
    static checks still run. The factory's data folder (its key, its bundles) is hidden from the
    sandbox; the checks' scratch folders live under the system's temporary folder, each bound into
    its own sandbox alone."""
    if not settings.verify:
        return None
    from factory.scratch_pg import PostgresScratchDatabase
    from teams.verification import Verifier
    from verify.sandbox import default_sandbox

    return Verifier(
        # Not under the data folder (hidden from the sandbox, and under a home other users cannot
        # enter): each check's code runs as a user of its own, who must reach its scratch folder.
        Path(tempfile.gettempdir()) / "factory-verify",
        # Probed on its first use (not at every start-up): without bubblewrap, that check says so.
        sandbox=default_sandbox(hidden=[settings.data_dir, settings.config_file]),
        database=PostgresScratchDatabase(database_url),
        execute=settings.sandbox_execute,
        timeout_s=settings.verify_timeout_s,
        policies=sandbox_policies(settings),
    )


def sandbox_policies(settings: Settings) -> dict[str, SandboxPolicy]:
    """Each team's sandbox policy in this environment: its own ``[sandbox]`` (objective.toml), then
    FACTORY_SANDBOX_POLICY's ``[default]`` table, then its table named after the team; with
    FACTORY_SANDBOX_EXECUTE=false no team runs code. A bad file is an ``InputError`` (exit 2)."""
    from teams.roster import roster, sandbox_policy

    overrides = _policy_file(settings.sandbox_policy) if settings.sandbox_policy else {}
    where = f"FACTORY_SANDBOX_POLICY ({settings.sandbox_policy})"
    policies: dict[str, SandboxPolicy] = {}
    for slug, member in roster().items():
        table = {**member.sandbox.summary(), **overrides.get("default", {}), **overrides.get(slug, {})}
        policy = sandbox_policy(table, where=where)
        policies[slug] = policy if settings.sandbox_execute else replace(policy, execute=False)
    return policies


def _policy_file(path: Path) -> dict[str, dict[str, object]]:
    from teams.roster import roster

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"FACTORY_SANDBOX_POLICY: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"FACTORY_SANDBOX_POLICY: {path} is not valid TOML: {exc}") from exc
    known = {"default", *roster()}
    for name, table in data.items():
        if name not in known or not isinstance(table, dict):
            raise InputError(
                f"FACTORY_SANDBOX_POLICY: [{name}] is not a team; use [default] or a team slug: {', '.join(roster())}"
            )
        if table.get("network"):
            raise InputError(
                f"FACTORY_SANDBOX_POLICY: [{name}] network = true is refused; produced code never gets the network"
            )
    return data
