"""The contracts of verification (issue 19): findings, check reports, the sandbox and its policy.

A *check* looks at a stage's files and says what it found; a check that runs produced code runs it
only inside a :class:`Sandbox`. Everything here is plain data so that reports go into the audit as
JSON and the same contracts serve the pipeline's gate, the CLI and the chat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class Severity(StrEnum):
    """How bad a finding is (security scanners' scale; a failed check's finding is ``high``)."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Outcome(StrEnum):
    """What became of one check: it passed, it failed (findings), it could not run or crashed
    (``error``: the check's fault, reported, never fatal), or it had nothing to do (``skipped``)."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


class Finding(BaseModel):
    """One thing a check found wrong in one file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str
    artifact: str  # the file's name in the bundle ("" when the finding is about no one file)
    message: str = Field(max_length=2000)
    severity: Severity = Severity.HIGH
    line: int | None = None


class TestCounts(BaseModel):
    """Test results of a check that runs tests."""

    __test__ = False  # not a pytest test class, whatever its name
    model_config = ConfigDict(extra="forbid", frozen=True)

    passed: int = 0
    failed: int = 0
    errors: int = 0


class CheckReport(BaseModel):
    """One check's result over the files it applies to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str
    outcome: Outcome
    artifacts: list[str] = Field(default_factory=list)  # the files it looked at
    findings: list[Finding] = Field(default_factory=list)
    detail: str = ""  # why it errored or was skipped, in a sentence
    duration_s: float = 0.0
    tests: TestCounts | None = None


@dataclass(frozen=True)
class SandboxPolicy:
    """What produced code may do when a team's checks run it (DESIGN deviation: issue 19).

    ``execute`` False: nothing of the team's runs (static checks only). Limits are per execution."""

    execute: bool = True
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512  # address space (RLIMIT_AS)
    max_procs: int = 32  # processes and threads (RLIMIT_NPROC, for the sandbox's own user)
    output_kib: int = 256  # stdout/stderr kept, and the largest file it may write (RLIMIT_FSIZE)
    wall_s: float = 30.0  # wall-clock time, then the whole sandbox is killed
    network: bool = False  # never True in the shipped policies

    def summary(self) -> dict[str, object]:
        return {
            "execute": self.execute,
            "cpu_s": self.cpu_s,
            "memory_mb": self.memory_mb,
            "max_procs": self.max_procs,
            "output_kib": self.output_kib,
            "wall_s": self.wall_s,
            "network": self.network,
        }


@dataclass(frozen=True)
class SandboxRun:
    """How one sandboxed execution ended."""

    exit_code: int | None  # None when it was killed
    stdout: str
    stderr: str
    duration_s: float
    killed: str | None = None  # "wall time", "cpu time", "memory", "output", ... when stopped
    truncated: bool = False  # output beyond the policy's cap was dropped

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed is None


class SandboxUnavailable(Exception):
    """No isolation tool here: the caller reports the check as not run (never runs code bare)."""


class Sandbox(Protocol):
    """Runs a command over a scratch directory with no network and a read-only view of the rest."""

    async def run(
        self, argv: Sequence[str], *, workdir: Path, policy: SandboxPolicy, env: dict[str, str] | None = None
    ) -> SandboxRun: ...


class ScratchDatabase(Protocol):
    """Applies SQL to a scratch schema that is dropped afterwards; returns the error text or None."""

    async def apply(self, sql: str, *, timeout_s: float) -> str | None: ...


@dataclass
class Workspace:
    """The files a stage's checks see: its own (``targets``) beside the earlier stages' it reads,
    written under ``root``; the sandbox and scratch database the checks may use."""

    root: Path
    targets: list[str]  # names of the files this stage produced
    policy: SandboxPolicy
    sandbox: Sandbox | None = None
    database: ScratchDatabase | None = None
    others: list[str] = field(default_factory=list)  # earlier stages' files, present under root


class Check(Protocol):
    """One tool of the registry."""

    name: str

    def applies(self, artifact: str) -> bool: ...

    async def run(self, workspace: Workspace, artifacts: Sequence[str]) -> CheckReport: ...
