"""What every check shares: its catalog entry, report building, reading the workspace's files and
running the virtualenv's own static tools (ruff, bandit) as plain subprocesses with a timeout."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from verify.base import CheckReport, Finding, Outcome, Severity, TestCounts, Workspace
from verify.registry import ToolSpec

SEVERITY_ORDER = (Severity.INFO, Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)
FAILS_AT = Severity.MEDIUM  # a finding this bad or worse fails its check (catalog.toml's header)
MAX_FILE_BYTES = 2 * 1024 * 1024  # a produced file larger than this is not parsed
MESSAGE_CHARS = 1900  # Finding.message allows 2000
NO_SANDBOX = "no sandbox is available here to run the team's code in, so it was not run"
NO_EXECUTE = "the team's sandbox policy does not allow running code"


def rank(severity: Severity) -> int:
    return SEVERITY_ORDER.index(severity)


def fails(findings: Sequence[Finding]) -> bool:
    return any(rank(f.severity) >= rank(FAILS_AT) for f in findings)


class ToolFailed(RuntimeError):
    """A checking tool itself crashed or hung: the runner reports the check as errored."""


class CatalogCheck(ABC):
    """A check built from its catalog entry: ``name`` is the tool id, ``applies`` its patterns."""

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self.name = spec.id

    def applies(self, artifact: str) -> bool:
        return self.spec.applies(artifact)

    async def run(self, workspace: Workspace, artifacts: Sequence[str]) -> CheckReport:
        started = time.monotonic()
        names = list(artifacts)
        if self.spec.executes and not workspace.policy.execute:
            report = self.skipped(names, NO_EXECUTE)
        else:
            report = await self.check(workspace, names)
        return report.model_copy(update={"duration_s": round(time.monotonic() - started, 3)})

    @abstractmethod
    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        """Look at the files (the policy already allows what the check does)."""

    def finding(
        self, artifact: str, message: str, *, severity: Severity | None = None, line: int | None = None
    ) -> Finding:
        text = message.strip() or "(no message)"
        if len(text) > MESSAGE_CHARS:
            text = text[: MESSAGE_CHARS - 1] + "…"
        return Finding(
            check=self.name, artifact=artifact, message=text, severity=severity or self.spec.severity, line=line
        )

    def report(
        self, artifacts: list[str], findings: Sequence[Finding], *, tests: TestCounts | None = None, detail: str = ""
    ) -> CheckReport:
        outcome = Outcome.FAILED if fails(findings) else Outcome.PASSED
        if tests is not None and (tests.failed or tests.errors):
            outcome = Outcome.FAILED
        return CheckReport(
            check=self.name, outcome=outcome, artifacts=artifacts, findings=list(findings), detail=detail, tests=tests
        )

    def skipped(self, artifacts: list[str], detail: str) -> CheckReport:
        return CheckReport(check=self.name, outcome=Outcome.SKIPPED, artifacts=artifacts, detail=detail)

    def errored(self, artifacts: list[str], detail: str) -> CheckReport:
        return CheckReport(check=self.name, outcome=Outcome.ERROR, artifacts=artifacts, detail=detail)


class FileByFileCheck(CatalogCheck):
    """A static check that reads each file alone (off the event loop): ``inspect`` gives its findings;
    a file it cannot read (too large) is a finding of ``unreadable`` severity, the spec's by default."""

    unreadable: Severity | None = None

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        findings = await asyncio.to_thread(self._all, workspace, artifacts)
        return self.report(artifacts, findings)

    def _all(self, workspace: Workspace, artifacts: list[str]) -> list[Finding]:
        findings: list[Finding] = []
        for name in artifacts:
            try:
                findings += self.inspect_file(name, read_text(workspace, name))
            except ValueError as exc:
                findings.append(self.finding(name, str(exc), severity=self.unreadable, line=getattr(exc, "line", None)))
        return findings

    @abstractmethod
    def inspect_file(self, name: str, text: str) -> list[Finding]:
        """The findings of one file's text (a ``ValueError`` raised here is one finding too)."""


def read_text(workspace: Workspace, artifact: str) -> str:
    """A produced file's text (undecodable bytes replaced); ``ValueError`` when it is too large."""
    path = workspace.root / artifact
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{artifact} is {size} bytes, more than the {MAX_FILE_BYTES} a check reads")
    return path.read_text(encoding="utf-8", errors="replace")


def venv_tool(name: str) -> Path | None:
    """A console script of the factory's own virtualenv (beside ``sys.executable``), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def tool_env() -> dict[str, str]:
    """The environment of a static tool: nothing of the factory's (no keys, no service URLs)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


async def run_tool(
    argv: Sequence[str], *, cwd: Path, timeout_s: float, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """Run a static tool (it only reads files, and ``stdin`` if given) and return its exit code,
    stdout and stderr; a tool that does not finish in ``timeout_s`` is killed with its process group
    and ``TimeoutError`` raised."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=tool_env(),
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise
    except BaseException:  # cancelled: the tool must not outlive its check
        _kill_group(proc)
        raise
    code = proc.returncode if proc.returncode is not None else -1
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def run_static_tool(name: str, argv: Sequence[str], *, cwd: Path, timeout_s: float) -> tuple[int, str, str]:
    """``run_tool`` for a venv console script by name, with a clear ``ToolFailed`` when it is missing
    or does not finish."""
    binary = venv_tool(name)
    if binary is None:
        raise ToolFailed(f"{name} is not installed beside {sys.executable}; run `make install`")
    try:
        return await run_tool([str(binary), *argv], cwd=cwd, timeout_s=timeout_s)
    except TimeoutError as exc:
        raise ToolFailed(f"{name} did not finish in {timeout_s:g} s") from exc
