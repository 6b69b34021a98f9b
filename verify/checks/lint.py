"""``ruff``: the virtualenv's ruff over the Python files, ignoring any ruff configuration the team
wrote (``--isolated``), with ruff's classic rule set (pyflakes and pycodestyle errors), Python 3.11."""

from __future__ import annotations

import json
import os
from pathlib import Path

from verify.base import CheckReport, Finding, Severity, Workspace
from verify.checks._common import CatalogCheck, ToolFailed, run_static_tool

TIMEOUT_S = 30.0
# Real bugs fail the check: invalid syntax, comparisons that cannot work, misplaced statements,
# undefined names. Everything else (unused imports, style) is reported as low.
FAILING_PREFIXES = ("invalid-syntax", "E9", "F63", "F7", "F82")
# Named, not ruff's default: newer ruff releases enable far more rules by default.
RULES = "E4,E7,E9,F"


def relative(root: Path, filename: str) -> str:
    """A tool's file name made relative to the workspace (tools print absolute paths)."""
    for base in (root, root.resolve()):
        try:
            return Path(filename).relative_to(base).as_posix()
        except ValueError:
            continue
    return os.path.basename(filename)


class RuffCheck(CatalogCheck):
    """One finding per ruff diagnostic."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        argv = ["check", "--output-format", "json", "--no-cache", "--isolated", "--exit-zero"]
        argv += ["--select", RULES, "--target-version", "py311", "--", *artifacts]
        code, out, err = await run_static_tool("ruff", argv, cwd=workspace.root, timeout_s=TIMEOUT_S)
        try:
            diagnostics = json.loads(out)
        except json.JSONDecodeError as exc:
            raise ToolFailed(f"ruff exited {code} without a JSON report: {err.strip()[:500]}") from exc
        findings = [self._finding(workspace.root, d) for d in diagnostics]
        return self.report(artifacts, findings)

    def _finding(self, root: Path, diagnostic: dict[str, object]) -> Finding:
        code = diagnostic.get("code")
        failing = code is None or str(code).startswith(FAILING_PREFIXES)
        location = diagnostic.get("location")
        row = location.get("row") if isinstance(location, dict) else None
        label = str(code) if code else "syntax"
        return self.finding(
            relative(root, str(diagnostic.get("filename", ""))),
            f"{label}: {diagnostic.get('message', '')}",
            severity=Severity.HIGH if failing else Severity.LOW,
            line=row if isinstance(row, int) else None,
        )
