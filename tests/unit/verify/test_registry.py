"""The tool catalog as data, the registry's look-ups, and the teams' declarations of their tools."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from factory.errors import InputError
from verify.base import SandboxPolicy
from verify.registry import catalog, checks_for, describe, expand_braces, matches

ROSTER = Path(__file__).resolve().parents[3] / "teams" / "roster"
TOOL_IDS = [
    "python-syntax",
    "python-import",
    "ruff",
    "pytest",
    "data-parse",
    "openapi",
    "sql-apply",
    "dockerfile",
    "ci-yaml",
    "bandit",
    "secrets",
    "mermaid",
]
NEVER_EXECUTE = ("documentation", "product-management", "compliance-legal")


def objectives() -> dict[str, dict[str, object]]:
    return {d.name: tomllib.loads((d / "objective.toml").read_text()) for d in sorted(ROSTER.iterdir()) if d.is_dir()}


def test_catalog_holds_every_tool_with_its_fields() -> None:
    tools = catalog()
    assert list(tools) == TOOL_IDS
    for tool_id, spec in tools.items():
        assert spec.id == tool_id and spec.description and spec.inputs and spec.applies_to
        assert spec.executes == (spec.needs in ("sandbox", "database")), tool_id
    assert [t for t, s in tools.items() if s.security] == ["bandit", "secrets"]
    assert tools["mermaid"].available and "`make install`" in tools["mermaid"].note
    assert catalog() is tools  # read once


def test_checks_for_builds_the_checks_in_order_once_each() -> None:
    checks = checks_for(["ruff", "python-syntax", "ruff"])
    assert [c.name for c in checks] == ["ruff", "python-syntax"]
    assert checks_for([]) == []


def test_an_unknown_tool_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InputError) as raised:
        checks_for(["ruff", "eslint"])
    assert "'eslint'" in str(raised.value) and all(t in str(raised.value) for t in TOOL_IDS)
    with pytest.raises(InputError):
        describe(["nope"])


def test_describe_is_json_ready() -> None:
    (pytest_tool,) = describe(["pytest"])
    assert pytest_tool["id"] == "pytest" and pytest_tool["executes"] is True and pytest_tool["needs"] == "sandbox"
    assert pytest_tool["applies_to"] == ["test_*.py", "*_test.py"] and pytest_tool["severity"] == "high"


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        (["*.py"], "backend/app.py", True),
        (["test_*.py", "*_test.py"], "qa/test_app.py", True),
        (["test_*.py", "*_test.py"], "qa/app_test.py", True),
        (["test_*.py", "*_test.py"], "qa/tests.py", False),
        (["openapi*.{yaml,yml,json}"], "api/openapi.yaml", True),
        (["openapi*.{yaml,yml,json}"], "api/openapi-v2.json", True),
        (["openapi*.{yaml,yml,json}"], "api/conventions.md", False),
        (["*/workflows/*.{yml,yaml}"], ".github/workflows/ci.yml", True),
        (["*/workflows/*.{yml,yaml}"], "workflows/ci.yml", False),
        (["Dockerfile", "Dockerfile.*"], "devops/Dockerfile", True),
        (["Dockerfile", "Dockerfile.*"], "devops/Dockerfile.prod", True),
        (["Dockerfile"], "devops/dockerfile.md", False),
    ],
)
def test_patterns(patterns: list[str], name: str, expected: bool) -> None:
    assert matches(patterns, name) is expected


def test_braces_expand() -> None:
    assert expand_braces("*.{a,b}.{c,d}") == ["*.a.c", "*.a.d", "*.b.c", "*.b.d"]
    assert expand_braces("plain") == ["plain"]


def test_every_team_declares_known_tools_that_fit_what_it_produces() -> None:
    tools = catalog()
    teams = objectives()
    assert len(teams) == 17
    for slug, spec in teams.items():
        declared = spec["tools"]
        assert isinstance(declared, list) and set(declared) <= set(tools), slug
        produced = [d["name"] for d in spec["produces"]]  # type: ignore[attr-defined]
        for tool in declared:
            assert any(tools[tool].applies(name) for name in produced), f"{slug}: {tool} applies to none of its files"


def test_every_team_has_a_sandbox_policy_of_the_policy_fields() -> None:
    names = {f.name for f in fields(SandboxPolicy)}
    for slug, spec in objectives().items():
        table = spec["sandbox"]
        assert isinstance(table, dict) and set(table) <= names, slug
        policy = SandboxPolicy(**table)
        assert policy.network is False, slug
        runs_code = any(catalog()[t].executes for t in spec["tools"])  # type: ignore[attr-defined]
        assert policy.execute is runs_code, f"{slug}: execute only where a tool runs its code"
    for slug in NEVER_EXECUTE:
        assert objectives()[slug]["sandbox"] == {"execute": False}


def test_tools_md_lists_each_declared_check_after_the_tools() -> None:
    for slug, spec in objectives().items():
        text = (ROSTER / slug / "TOOLS.md").read_text()
        assert text.index("`write_artifact(") < text.index("## Checks of this team's files"), slug
        for tool in spec["tools"]:  # type: ignore[attr-defined]
            assert f"- `{tool}`: {catalog()[tool].description}" in text, f"{slug}: {tool}"
        if not spec["tools"]:
            assert "- none:" in text, slug
