"""``sql-apply``: each SQL file is applied to a scratch PostgreSQL schema (``workspace.database``,
:class:`~verify.base.ScratchDatabase`): PostgreSQL's refusal is the finding. The scratch database
applies it as an unprivileged role in a schema of its own, dropped afterwards."""

from __future__ import annotations

from factory.errors import FactoryError
from verify.base import CheckReport, Finding, Workspace
from verify.checks._common import CatalogCheck, read_text

NO_DATABASE = "no scratch PostgreSQL database is configured for checks, so the SQL was not applied"
MAX_TIMEOUT_S = 60.0


class SqlApplyCheck(CatalogCheck):
    """One finding per SQL file PostgreSQL refuses (an empty file is one too)."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        if workspace.database is None:
            return self.skipped(artifacts, NO_DATABASE)
        timeout_s = min(workspace.policy.wall_s, MAX_TIMEOUT_S)
        findings: list[Finding] = []
        for name in artifacts:
            try:
                sql = read_text(workspace, name)
            except ValueError as exc:
                findings.append(self.finding(name, str(exc)))
                continue
            if not sql.strip():
                findings.append(self.finding(name, "the SQL file is empty"))
                continue
            try:
                error = await workspace.database.apply(sql, timeout_s=timeout_s)
            except FactoryError as exc:  # no database or no safe role: the check's matter, not the team's
                return self.errored(artifacts, str(exc))
            if error is not None:
                findings.append(self.finding(name, f"PostgreSQL refused it: {error}", line=_line(error)))
        return self.report(artifacts, findings)


def _line(error: str) -> int | None:
    """The line PostgreSQL's ``LINE n:`` context names, if any."""
    for part in error.splitlines():
        if part.startswith("LINE ") and ":" in part:
            number = part[5 : part.index(":")]
            if number.isdigit():
                return int(number)
    return None
