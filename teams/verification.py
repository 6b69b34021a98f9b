"""The verification gate (issue 19): after a team's result, the factory checks its files.

A stage's files are written beside the earlier files the team reads into a scratch workspace; the
team's checks (``tools`` in its objective.toml, ``verify/catalog.toml``) run over them, code only
inside the sandbox under the team's ``[sandbox]`` policy. What fails goes back to the same team as a
bounded revision; what still fails after its budget becomes an approval escalation that carries the
findings. The reports go into the execution's audit entry, the figures into the stage record.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from teams.base import Run, StageRecord
from teams.results import TaskResult
from teams.roster import Team
from teams.runner import PriorArtifact
from verify.base import CheckReport, Outcome, Sandbox, SandboxPolicy, ScratchDatabase, Workspace
from verify.registry import checks_for
from verify.runner import run_checks, write_workspace
from verify.summary import Figures, feedback, figures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """One result's checks: every report and the figures they add up to."""

    reports: list[CheckReport]
    figures: Figures
    owners: Mapping[str, str]  # file name → the team that wrote it

    @property
    def failed(self) -> list[CheckReport]:
        return [r for r in self.reports if r.outcome is Outcome.FAILED]

    def failing_owners(self) -> set[str]:
        """The teams owning the files the failures point at."""
        return {self.owners.get(f.artifact, "") for r in self.failed for f in r.findings} - {""}

    def feedback(self) -> str:
        return feedback(self.reports)

    def audit(self) -> dict[str, Any]:
        """What the execution's audit entry records (every check, every sandboxed execution)."""
        return {
            "figures": self.figures.model_dump(mode="json"),
            "reports": [r.model_dump(mode="json") for r in self.reports],
        }

    def brief(self) -> dict[str, Any]:
        """The stage record's figures: what ``factory run --json``, the API and the chat show."""
        f = self.figures
        return {
            "run": f.checks_run,
            "passed": f.checks_passed,
            "failed": f.checks_failed,
            "errored": f.checks_errored,
            "skipped": f.checks_skipped,
            "artifacts_checked": f.artifacts_checked,
            "artifacts_total": f.artifacts_total,
            "tests_passed": f.tests_passed,
            "tests_failed": f.tests_failed,
            "security": dict(f.security),
            "failing": [r.check for r in self.failed],
        }


class StageVerifier(Protocol):
    """Checks one result of one stage (the pipeline's seam; ``None`` in its deps: no checks)."""

    async def verify(
        self, run: Run, stage: StageRecord, member: Team, result: TaskResult, context: Sequence[PriorArtifact]
    ) -> Verification | None: ...


class Verifier:
    """``StageVerifier`` over the tool registry, the sandbox and a scratch database."""

    def __init__(
        self,
        scratch_root: Path,
        *,
        sandbox: Sandbox | None,
        database: ScratchDatabase | None = None,
        execute: bool = True,
        timeout_s: float = 60.0,
        policies: Mapping[str, SandboxPolicy] | None = None,
    ) -> None:
        self._root = scratch_root
        self._sandbox = sandbox
        self._database = database
        self._execute = execute  # the environment's word: False and no team's code runs anywhere
        self._timeout_s = timeout_s
        self._policies = dict(policies or {})  # a team's policy as this environment sets it

    def policy_of(self, member: Team) -> SandboxPolicy:
        policy = self._policies.get(member.slug, member.sandbox)
        return policy if self._execute else replace(policy, execute=False)

    async def verify(
        self, run: Run, stage: StageRecord, member: Team, result: TaskResult, context: Sequence[PriorArtifact]
    ) -> Verification | None:
        if not member.checks or not result.artifacts:
            return None
        checks = checks_for(member.checks)
        files = {p.artifact.name: p.artifact.content for p in context}
        files.update({a.name: a.content for a in result.artifacts})
        owners = {p.artifact.name: p.team for p in context} | {a.name: member.slug for a in result.artifacts}
        targets = [a.name for a in result.artifacts]
        if not self._root.is_dir():  # others may pass through it (a sandbox's user), not list it
            await asyncio.to_thread(self._root.mkdir, 0o711, True, True)
        root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"{run.id}-{stage.index}-", dir=self._root))
        try:
            await asyncio.to_thread(write_workspace, root, files)
            workspace = Workspace(
                root=root,
                targets=targets,
                policy=self.policy_of(member),
                sandbox=self._sandbox,
                database=self._database,
                others=[n for n in files if n not in targets],
            )
            reports = await run_checks(checks, workspace, timeout_s=self._timeout_s)
        finally:
            await asyncio.to_thread(shutil.rmtree, root, True)
        return Verification(reports, figures(reports, targets), owners)
