"""Verification of the teams' work (issue 19): the contracts (``verify.base``), the tool registry
(``verify.registry`` over ``catalog.toml``), the checks (``verify.checks``), running them
(``verify.runner``), their figures and a team's feedback (``verify.summary``), and the sandbox
(``verify.sandbox``)."""

from verify.base import (
    Check,
    CheckReport,
    Finding,
    Outcome,
    Sandbox,
    SandboxPolicy,
    SandboxRun,
    SandboxUnavailable,
    ScratchDatabase,
    Severity,
    TestCounts,
    Workspace,
)

__all__ = [
    "Check",
    "CheckReport",
    "Finding",
    "Outcome",
    "Sandbox",
    "SandboxPolicy",
    "SandboxRun",
    "SandboxUnavailable",
    "ScratchDatabase",
    "Severity",
    "TestCounts",
    "Workspace",
]
