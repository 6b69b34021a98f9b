"""``python-syntax``: Python files parse with the standard library's own parser (nothing runs)."""

from __future__ import annotations

import ast
import asyncio

from verify.base import CheckReport, Finding, Workspace
from verify.checks._common import CatalogCheck, read_text


class PythonSyntaxCheck(CatalogCheck):
    """Compiles each file to an AST; a syntax error is a finding at its line."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        findings = await asyncio.to_thread(self._parse_all, workspace, artifacts)
        return self.report(artifacts, findings)

    def _parse_all(self, workspace: Workspace, artifacts: list[str]) -> list[Finding]:
        findings: list[Finding] = []
        for name in artifacts:
            try:
                ast.parse(read_text(workspace, name), filename=name)
            except SyntaxError as exc:  # IndentationError and TabError are SyntaxErrors
                where = f" (line {exc.lineno}, column {exc.offset})" if exc.lineno else ""
                text = (exc.text or "").strip()
                shown = f": {text[:160]}" if text else ""
                message = f"{type(exc).__name__}: {exc.msg}{where}{shown}"
                findings.append(self.finding(name, message, line=exc.lineno))
            except (ValueError, RecursionError, MemoryError) as exc:
                findings.append(self.finding(name, f"cannot be parsed: {type(exc).__name__}: {exc}"))
        return findings
