"""``pytest``: the stage's test files run with pytest in the sandbox, the whole workspace on the
path, no third-party pytest plugins (the same in every installation), results read from pytest's
JUnit XML report.

A failed test is a finding on the test file, or — when its traceback ends in another file of the
workspace (the code under test) — on that file, so the failure can be routed to the team owning it."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from verify.base import CheckReport, Finding, TestCounts, Workspace
from verify.checks._common import CatalogCheck, ToolFailed
from verify.checks._sandboxed import NotRun, interpreter, last_frame, python_path, run_in_sandbox, stopped, tail

MAX_REPORT_BYTES = 4 * 1024 * 1024
INI = "[pytest]\n"  # the check's own configuration: no parent directory's pytest settings apply
ENV = {"PYTHONNOUSERSITE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
NO_TESTS = 5  # pytest's exit code when it collected nothing
RAN = (0, 1, 2, NO_TESTS)  # passed, tests failed, interrupted (collection errors), none collected


@dataclass(frozen=True)
class Case:
    """One test case of the JUnit report."""

    test_id: str
    outcome: str  # passed | failed | error | skipped
    message: str
    text: str


def test_id(classname: str, name: str, tests: Sequence[str]) -> str:
    """``qa.test_app.TestX`` + ``test_y`` → ``qa/test_app.py::TestX::test_y`` (by the test files)."""
    if not classname:  # a collection error is reported as the module itself: name = "qa.test_app"
        classname, name = name, ""
    for path in sorted(tests, key=len, reverse=True):
        dotted = path[:-3].replace("/", ".")
        if classname == dotted or classname.startswith(dotted + "."):
            rest = classname[len(dotted) + 1 :]
            return "::".join([path, *(rest.split(".") if rest else []), *([name] if name else [])])
    return "::".join(p for p in (classname, name) if p)


def parse_junit(xml_text: str, tests: Sequence[str]) -> list[Case]:
    """The cases of a pytest JUnit XML report."""
    root = ET.fromstring(xml_text)
    cases: list[Case] = []
    for case in root.iter("testcase"):
        ident = test_id(case.get("classname", ""), case.get("name", ""), tests)
        outcome, message, text = "passed", "", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message, text = child.get("message", ""), child.text or ""
                break
        cases.append(Case(ident, outcome, message, text))
    return cases


def counts(cases: Sequence[Case]) -> TestCounts:
    return TestCounts(
        passed=sum(c.outcome == "passed" for c in cases),
        failed=sum(c.outcome == "failed" for c in cases),
        errors=sum(c.outcome == "error" for c in cases),
    )


class PytestCheck(CatalogCheck):
    """Test counts and one finding per failed or errored test."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        tag = uuid.uuid4().hex[:12]
        ini, junit = f".verify-pytest-{tag}.ini", f".verify-junit-{tag}.xml"
        (workspace.root / ini).write_text(INI, encoding="utf-8")
        python = await interpreter(workspace)
        argv = [python.executable, "-m", "pytest", "-c", ini, "--rootdir=.", "-q", "-p", "no:cacheprovider"]
        argv += ["--tb=short", "-o", "junit_family=xunit2", f"--junitxml={junit}", "--", *artifacts]
        try:
            run = await run_in_sandbox(workspace, argv, {**ENV, "PYTHONPATH": python_path(workspace, python.path)})
        except NotRun as exc:
            return self.skipped(artifacts, str(exc))
        finally:
            (workspace.root / ini).unlink(missing_ok=True)
        cases = self._cases(workspace.root / junit, artifacts)
        if run.killed:
            message = f"the tests were stopped: {stopped(run, workspace.policy.wall_s)}"
            return self.report(artifacts, [self.finding("", message)], tests=counts(cases) if cases else None)
        if run.exit_code not in RAN or (not cases and "No module named pytest" in run.stderr):
            raise ToolFailed(
                f"pytest could not run the tests (exit code {run.exit_code}): {tail(run.stdout + run.stderr)}"
            )
        if run.exit_code == NO_TESTS:
            message = f"no tests were collected from {', '.join(artifacts)}: name test functions test_*"
            return self.report(artifacts, [self.finding(artifacts[0], message)], tests=TestCounts())
        files = [*workspace.targets, *workspace.others]
        findings = [self._finding(c, files, workspace.root) for c in cases if c.outcome in ("failed", "error")]
        if run.exit_code != 0 and not findings:  # pytest failed, yet its report names no failing test
            findings.append(self.finding("", f"pytest exited {run.exit_code}: {tail(run.stdout + run.stderr)}"))
        return self.report(artifacts, findings, tests=counts(cases))

    def _cases(self, junit: Path, tests: Sequence[str]) -> list[Case]:
        try:
            if not junit.is_file() or junit.stat().st_size > MAX_REPORT_BYTES:
                return []
            return parse_junit(junit.read_text(encoding="utf-8", errors="replace"), tests)
        except ET.ParseError:
            return []
        finally:
            junit.unlink(missing_ok=True)

    def _finding(self, case: Case, files: Sequence[str], root: Path) -> Finding:
        test_file = case.test_id.split("::", 1)[0]
        first = _first_error(case).replace(f"{root}/", "")  # the workspace's own names, not its scratch path
        where = last_frame(case.text, files)
        kind = "FAILED" if case.outcome == "failed" else "ERROR"
        message = f"{case.test_id} {kind}: {first[:500]}"
        owner = test_file if test_file in files else ""
        line = None
        if where is not None:
            message += f" (failed in {where[0]} line {where[1]})"
            owner, line = where
        return self.finding(owner, message, line=line)


_RAISED = re.compile(r"^([A-Za-z_][\w.]*)?(Error|Exception|Exit|Interrupt|Warning)\b[:(]?")


def _first_error(case: Case) -> str:
    """What went wrong, in a line: the first ``E`` line of pytest's report (the exception and its
    message), else the report's message attribute, else the report's last line."""
    lines = case.text.splitlines()
    reported = [line[1:].strip() for line in lines if line.startswith("E ") and line[1:].strip()]
    if reported:  # the exception's own line when pytest shows more (a syntax error's source first)
        return next((line for line in reversed(reported) if _RAISED.match(line)), reported[0])
    raised = [line.strip() for line in lines if _RAISED.match(line.strip())]
    if raised:  # e.g. an error in a fixture, reported as its traceback: the exception it ends with
        return raised[-1]
    message = next((line.strip() for line in case.message.splitlines() if line.strip()), "")
    return message or next((line.strip() for line in reversed(lines) if line.strip()), "")
