"""``bandit``: the virtualenv's bandit over the Python files, its JSON report mapped to findings.

Bandit's severity is kept; a result bandit itself is not confident of (``LOW`` confidence) is one
level lower, and binding to all interfaces (B104, what a container's service does) is low. ``# nosec``
comments are ignored: the factory's gate is not the team's to switch off."""

from __future__ import annotations

import json

from verify.base import CheckReport, Finding, Severity, Workspace
from verify.checks._common import SEVERITY_ORDER, CatalogCheck, ToolFailed, rank, run_static_tool

TIMEOUT_S = 60.0
SEVERITIES = {"LOW": Severity.LOW, "MEDIUM": Severity.MEDIUM, "HIGH": Severity.HIGH}
LOW_TESTS = frozenset({"B104"})


def severity_of(result: dict[str, object]) -> Severity:
    severity = SEVERITIES.get(str(result.get("issue_severity", "")).upper(), Severity.INFO)
    if result.get("test_id") in LOW_TESTS:
        return min(severity, Severity.LOW, key=rank)
    if str(result.get("issue_confidence", "")).upper() == "LOW" and severity != Severity.INFO:
        return SEVERITY_ORDER[rank(severity) - 1]
    return severity


class BanditCheck(CatalogCheck):
    """One finding per bandit result; a file bandit cannot parse is an ``info`` finding (the syntax
    check reports the error itself)."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        argv = ["-f", "json", "-q", "--ignore-nosec", "--", *artifacts]
        code, out, err = await run_static_tool("bandit", argv, cwd=workspace.root, timeout_s=TIMEOUT_S)
        try:
            report = json.loads(out)
        except json.JSONDecodeError as exc:
            raise ToolFailed(f"bandit exited {code} without a JSON report: {err.strip()[-500:]}") from exc
        findings = [self._finding(r) for r in report.get("results", [])]
        for error in report.get("errors", []):
            name = _name(error.get("filename", ""))
            findings.append(
                self.finding(name, f"bandit could not scan it: {error.get('reason')}", severity=Severity.INFO)
            )
        return self.report(artifacts, findings)

    def _finding(self, result: dict[str, object]) -> Finding:
        test = f"{result.get('test_id', '?')} {result.get('test_name', '')}".strip()
        message = (
            f"{test}: {result.get('issue_text', '')} (confidence {str(result.get('issue_confidence', '?')).lower()})"
        )
        line = result.get("line_number")
        return self.finding(
            _name(str(result.get("filename", ""))),
            message,
            severity=severity_of(result),
            line=line if isinstance(line, int) else None,
        )


def _name(filename: str) -> str:
    return filename[2:] if filename.startswith("./") else filename
