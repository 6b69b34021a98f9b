"""What a run's checks add up to (issue 19's figures) and the feedback a team gets for a revision."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, computed_field

from verify.base import CheckReport, Finding, Outcome, Severity
from verify.registry import catalog

FEEDBACK_FINDINGS = 20
FEEDBACK_MESSAGE_CHARS = 300
_ORDER = (Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO)


def _no_security() -> dict[str, int]:
    return {s.value: 0 for s in _ORDER}


class Figures(BaseModel):
    """Checks by outcome, the share of files a check looked at, tests, and security findings by
    severity (bandit's and the secret scan's), for one stage or, merged, one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checks_run: int = 0
    checks_passed: int = 0
    checks_failed: int = 0
    checks_errored: int = 0
    checks_skipped: int = 0
    artifacts_total: int = 0
    artifacts_checked: int = 0  # files a check passed or failed over (not only skipped or errored)
    tests_passed: int = 0
    tests_failed: int = 0  # failed and errored tests
    security: dict[str, int] = Field(default_factory=_no_security)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def share_checked(self) -> float:
        """artifacts_checked / artifacts_total (0.0 with no artifacts)."""
        return round(self.artifacts_checked / self.artifacts_total, 4) if self.artifacts_total else 0.0


def _is_security(check: str) -> bool:
    spec = catalog().get(check)
    return bool(spec and spec.security)


def figures(reports: Sequence[CheckReport], artifacts: Sequence[str]) -> Figures:
    """The figures of one stage's reports over the files it produced."""
    outcomes = [r.outcome for r in reports]
    produced = set(artifacts)
    checked = {a for r in reports if r.outcome in (Outcome.PASSED, Outcome.FAILED) for a in r.artifacts}
    security = _no_security()
    for report in reports:
        if _is_security(report.check):
            for finding in report.findings:
                security[finding.severity.value] += 1
    return Figures(
        checks_run=len(reports),
        checks_passed=outcomes.count(Outcome.PASSED),
        checks_failed=outcomes.count(Outcome.FAILED),
        checks_errored=outcomes.count(Outcome.ERROR),
        checks_skipped=outcomes.count(Outcome.SKIPPED),
        artifacts_total=len(produced),
        artifacts_checked=len(checked & produced),
        tests_passed=sum(r.tests.passed for r in reports if r.tests),
        tests_failed=sum(r.tests.failed + r.tests.errors for r in reports if r.tests),
        security=security,
    )


def merge(a: Figures, b: Figures) -> Figures:
    """Two stages' (or two runs') figures added up."""
    counts = {name: getattr(a, name) + getattr(b, name) for name in Figures.model_fields if name != "security"}
    security = {s.value: a.security.get(s.value, 0) + b.security.get(s.value, 0) for s in _ORDER}
    return Figures(**counts, security=security)


def _line(finding: Finding) -> str:
    where = finding.artifact or "(no one file)"
    if finding.line:
        where += f" line {finding.line}"
    message = " ".join(finding.message.split())
    if len(message) > FEEDBACK_MESSAGE_CHARS:
        message = message[: FEEDBACK_MESSAGE_CHARS - 1] + "…"
    return f"- [{finding.check}, {finding.severity.value}] {where}: {message}"


def feedback(reports: Sequence[CheckReport]) -> str:
    """What a team is told for a revision: each failing check and its worst findings (at most
    ``FEEDBACK_FINDINGS``, each cut to ``FEEDBACK_MESSAGE_CHARS``), then what to do. Empty when no
    check failed (a check that errored or was skipped is the factory's matter, not the team's)."""
    failed = [r for r in reports if r.outcome is Outcome.FAILED]
    if not failed:
        return ""
    lines = ["The factory's automatic checks failed on your files:"]
    for report in failed:
        extra = ""
        if report.tests:
            bad = report.tests.failed + report.tests.errors
            extra = f" ({bad} of {bad + report.tests.passed} tests failed)"
        lines.append(f"* {report.check} failed over {', '.join(report.artifacts) or 'your files'}{extra}")
    findings = sorted((f for r in failed for f in r.findings), key=lambda f: _ORDER.index(f.severity))
    shown = findings[:FEEDBACK_FINDINGS]
    lines += ["", "Findings, worst first:", *(_line(f) for f in shown)]
    if len(findings) > len(shown):
        lines.append(f"- … and {len(findings) - len(shown)} more findings not shown")
    lines += [
        "",
        "Fix every finding of severity medium or worse in the files named, keep what already works, and"
        " return every file you produce again, complete. If a finding is wrong, say why in your reasoning"
        " instead of working around the check.",
    ]
    return "\n".join(lines)
