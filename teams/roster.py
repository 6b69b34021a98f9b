"""The team roster: identity docs and objective templates, loaded from ``teams/roster/<slug>/``.

Each team folder holds ``SOUL.md`` (purpose and values), ``AGENTS.md`` (its operatives),
``TOOLS.md`` (its tools) and ``objective.toml`` (alias, goal template, acceptance criteria,
artifacts it produces, teams whose artifacts it reads, the checks of ``verify/catalog.toml`` that
run over its files, and the ``[sandbox]`` policy those checks run its code under).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

from factory.errors import InputError, UnknownTeam
from teams.slugs import ALL_TEAMS, PIPELINES, TeamSlug
from verify.base import SandboxPolicy

ROSTER_DIR = Path(__file__).with_name("roster")


@dataclass(frozen=True)
class Deliverable:
    """An artifact a team must produce."""

    name: str
    kind: str
    description: str


@dataclass(frozen=True)
class Team:
    """One team: who it is, what model it uses and what it must deliver."""

    slug: TeamSlug
    name: str
    alias: str
    soul: str
    agents: str
    tools: str
    goal: str
    acceptance_criteria: tuple[str, ...]
    produces: tuple[Deliverable, ...]
    reads: tuple[TeamSlug, ...]
    checks: tuple[str, ...] = ()  # tool ids of verify/catalog.toml run over its files
    sandbox: SandboxPolicy = field(default_factory=SandboxPolicy)

    def summary(self) -> dict[str, object]:
        """A JSON-ready description for ``factory teams list --json``."""
        return {
            "slug": self.slug,
            "name": self.name,
            "alias": self.alias,
            "produces": [{"name": d.name, "kind": d.kind} for d in self.produces],
            "reads": list(self.reads),
            "goal": self.goal,
            "acceptance_criteria": list(self.acceptance_criteria),
            "checks": list(self.checks),
            "sandbox": self.sandbox.summary(),
            "identity": {"SOUL.md": self.soul, "AGENTS.md": self.agents, "TOOLS.md": self.tools},
        }


def _load(slug: TeamSlug) -> Team:
    folder = ROSTER_DIR / slug
    spec = tomllib.loads((folder / "objective.toml").read_text(encoding="utf-8"))
    return Team(
        slug=slug,
        name=spec["name"],
        alias=spec["alias"],
        soul=(folder / "SOUL.md").read_text(encoding="utf-8"),
        agents=(folder / "AGENTS.md").read_text(encoding="utf-8"),
        tools=(folder / "TOOLS.md").read_text(encoding="utf-8"),
        goal=spec["goal"].strip(),
        acceptance_criteria=tuple(spec["acceptance_criteria"]),
        produces=tuple(Deliverable(**d) for d in spec["produces"]),
        reads=tuple(spec.get("reads", [])),
        checks=tuple(spec.get("tools", [])),
        sandbox=sandbox_policy(spec.get("sandbox", {}), where=f"{slug}'s objective.toml"),
    )


def sandbox_policy(table: dict[str, object], *, where: str) -> SandboxPolicy:
    """A ``[sandbox]`` table as a policy; an unknown key or a wrong type is an ``InputError``."""
    known = {f.name: f for f in fields(SandboxPolicy)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown [sandbox] keys {', '.join(unknown)}; known: {', '.join(known)}")
    values: dict[str, object] = {}
    for key, value in table.items():
        default = getattr(SandboxPolicy(), key)
        if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, (bool, int, float)):
            raise InputError(f"{where}: [sandbox] {key} must be {type(default).__name__}, not {value!r}")
        if not isinstance(value, bool) and value <= 0:
            raise InputError(f"{where}: [sandbox] {key} must be above 0, not {value!r}")
        values[key] = type(default)(value)
    return SandboxPolicy(**values)  # type: ignore[arg-type]


@cache
def roster() -> dict[TeamSlug, Team]:
    """Every team that has a folder on the roster, in pipeline order."""
    return {slug: _load(slug) for slug in ALL_TEAMS if (ROSTER_DIR / slug / "objective.toml").is_file()}


def team(slug: str) -> Team:
    """One team by slug, or ``UnknownTeam`` naming the valid ones."""
    teams = roster()
    if slug not in teams:
        raise UnknownTeam(f"unknown team {slug!r}; known teams: {', '.join(teams)}")
    return teams[slug]


def resolve_pipeline(spec: str) -> tuple[str, tuple[TeamSlug, ...]]:
    """Turn ``phase1``, ``full`` or ``a,b,c`` into a name and the ordered teams it runs."""
    spec = spec.strip()
    if not spec:
        raise InputError("empty pipeline; use phase1, full, or a comma-separated list of team slugs")
    teams = roster()
    if spec in PIPELINES:
        slugs = PIPELINES[spec]
        missing = [s for s in slugs if s not in teams]
        if missing:
            raise InputError(
                f"pipeline {spec!r} needs teams not on the roster yet: {', '.join(missing)};"
                f" use phase1 or a list of: {', '.join(teams)}"
            )
        return spec, slugs
    parts = [p.strip() for p in spec.split(",")]
    if any(not p for p in parts):
        raise InputError(f"pipeline {spec!r} has an empty entry; separate team slugs with single commas")
    for part in parts:
        team(part)
    if len(set(parts)) != len(parts):
        raise InputError(f"pipeline {spec!r} names a team twice; each team runs once per pipeline")
    return "custom", tuple(parts)  # type: ignore[arg-type]
