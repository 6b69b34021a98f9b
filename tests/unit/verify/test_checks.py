"""The static checks of the tool registry on small good and broken files; the runner's handling of a
check that crashes or hangs; the figures and a team's feedback. (Checks that run code are tested
through the real sandbox in tests/integration/test_checks_exec.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from factory.errors import ConfigError, InputError
from verify.base import (
    CheckReport,
    Finding,
    Outcome,
    SandboxPolicy,
    SandboxRun,
    SandboxUnavailable,
    Severity,
    Workspace,
)
from verify.base import (
    TestCounts as Counts,
)
from verify.registry import checks_for
from verify.runner import run_checks, write_workspace
from verify.summary import FEEDBACK_FINDINGS, FEEDBACK_MESSAGE_CHARS, Figures, feedback, figures, merge


def workspace(root: Path, files: Mapping[str, str], **kwargs: object) -> Workspace:
    write_workspace(root, files)
    policy = kwargs.pop("policy", SandboxPolicy())
    return Workspace(root=root, targets=list(files), policy=policy, **kwargs)  # type: ignore[arg-type]


async def check(tool: str, root: Path, files: Mapping[str, str], **kwargs: object) -> CheckReport:
    """One tool over the files (all of them its targets), through the runner."""
    reports = await run_checks(checks_for([tool]), workspace(root, files, **kwargs), timeout_s=60)
    assert len(reports) == 1, reports
    return reports[0]


def high(report: CheckReport) -> list[Finding]:
    return [f for f in report.findings if f.severity in (Severity.HIGH, Severity.CRITICAL)]


# ---------------------------------------------------------------- python-syntax and ruff

GOOD_PY = 'def shorten(url: str) -> str:\n    if not url:\n        raise ValueError("empty url")\n    return url[:8]\n'


async def test_python_syntax_passes_good_code_and_names_the_line_of_an_error(tmp_path: Path) -> None:
    report = await check("python-syntax", tmp_path, {"backend/app.py": GOOD_PY, "backend/bad.py": "x = 1\ndef f(:\n"})
    assert report.outcome is Outcome.FAILED
    assert [(f.artifact, f.line) for f in report.findings] == [("backend/bad.py", 2)]
    assert "SyntaxError" in report.findings[0].message


async def test_ruff_fails_on_an_undefined_name_and_only_reports_style(tmp_path: Path) -> None:
    report = await check("ruff", tmp_path / "a", {"app.py": "def f():\n    return undefined_thing\n"})
    assert report.outcome is Outcome.FAILED
    assert report.findings[0].line == 2 and "F821" in report.findings[0].message
    style = await check("ruff", tmp_path / "b", {"app.py": "import os\n" + GOOD_PY})
    assert style.outcome is Outcome.PASSED
    assert [(f.severity, f.message[:4]) for f in style.findings] == [(Severity.LOW, "F401")]


async def test_ruff_ignores_a_configuration_the_team_wrote(tmp_path: Path) -> None:
    files = {"pyproject.toml": "[tool.ruff.lint]\nignore = ['F']\n", "app.py": "print(nowhere)\n"}
    report = await run_checks(checks_for(["ruff"]), workspace(tmp_path, files))
    assert report[0].outcome is Outcome.FAILED


# ---------------------------------------------------------------- data-parse


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("flags.yaml", "flags:\n  - name: a\n    owner: [unclosed\n", 4),
        ("data.json", '{\n  "a": 1,\n  "b": \n}\n', 4),
        ("conf.toml", "[a]\nx = 1\ny = = 2\n", 3),
        ("slos.yml", "", None),
    ],
)
async def test_data_parse_names_the_line_of_the_error(tmp_path: Path, name: str, text: str, line: int | None) -> None:
    report = await check("data-parse", tmp_path, {name: text})
    assert report.outcome is Outcome.FAILED
    assert report.findings[0].artifact == name and report.findings[0].line == line


async def test_data_parse_passes_good_files_and_refuses_an_alias_bomb(tmp_path: Path) -> None:
    good = {"a.yaml": "a: 1\n---\nb: [1, 2]\n", "b.json": '{"a": [1, 2]}', "c.toml": 'a = "b"\n'}
    assert (await check("data-parse", tmp_path / "good", good)).outcome is Outcome.PASSED
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(24)
    )
    report = await check("data-parse", tmp_path / "bomb", {"bomb.yaml": bomb})
    assert report.outcome is Outcome.FAILED and "aliases" in report.findings[0].message


# ---------------------------------------------------------------- openapi

OPENAPI = """openapi: 3.0.3
info: {title: Links, version: "1.0"}
paths:
  /links:
    post:
      operationId: createLink
      responses:
        "201":
          description: created
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Link"}
components:
  schemas:
    Link:
      type: object
      properties: {id: {type: string}, url: {type: string}}
"""


@pytest.mark.parametrize("version", ["3.0.3", "3.1.0"])
async def test_openapi_passes_a_valid_document(tmp_path: Path, version: str) -> None:
    report = await check("openapi", tmp_path, {"api/openapi.yaml": OPENAPI.replace("3.0.3", version)})
    assert report.outcome is Outcome.PASSED, report.findings


async def test_openapi_fails_an_invalid_document_at_its_line(tmp_path: Path) -> None:
    broken = OPENAPI.replace("      responses:\n", "      answers:\n")
    report = await check("openapi", tmp_path, {"api/openapi.yaml": broken})
    assert report.outcome is Outcome.FAILED
    assert any("'responses' is a required property" in f.message and f.line == 5 for f in report.findings)


async def test_openapi_does_not_fetch_a_remote_ref_nor_read_outside_the_workspace(tmp_path: Path) -> None:
    remote = OPENAPI.replace("#/components/schemas/Link", "https://example.com/link.yaml")
    outside = OPENAPI.replace("#/components/schemas/Link", "../../../etc/passwd")
    report = await check("openapi", tmp_path, {"api/openapi.yaml": remote, "api/openapi-2.yaml": outside})
    messages = {f.artifact: f.message for f in report.findings}
    assert "not fetched" in messages["api/openapi.yaml"]
    assert "names no file of the delivery" in messages["api/openapi-2.yaml"]


async def test_openapi_says_when_a_file_is_not_openapi(tmp_path: Path) -> None:
    report = await check("openapi", tmp_path, {"openapi.json": '{"title": "x"}'})
    assert report.outcome is Outcome.FAILED and "not an OpenAPI document" in report.findings[0].message


# ---------------------------------------------------------------- dockerfile

DOCKERFILE = """# syntax=docker/dockerfile:1
ARG PY=3.11.9
FROM python:${PY}-slim AS base
RUN apt-get update \\
    # comments inside a continuation are dropped
    && rm -rf /var/lib/apt/lists/*
COPY <<EOF /app/settings.ini
[app]
key = value
EOF
USER 10001
CMD ["python", "-m", "app"]
"""


async def test_dockerfile_passes_a_good_file_with_continuations_and_heredocs(tmp_path: Path) -> None:
    report = await check("dockerfile", tmp_path, {"devops/Dockerfile": DOCKERFILE})
    assert report.outcome is Outcome.PASSED and report.findings == []


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("", "no instructions", None),
        ("# only a comment\n", "no instructions", None),
        ("RUN echo hi\nFROM python:3.11\n", "first instruction must be FROM", 1),
        ("FROM python:3.11\nRUNN echo\nUSER app\n", "unknown instruction 'RUNN'", 2),
        ("FROM python:3.11\nUSER app\nCMD ['python', 'app.py']\n", "exec form is not a JSON array", 3),
        ("FROM python:3.11\nWORKDIR\nUSER app\n", "WORKDIR needs arguments", 2),
    ],
)
async def test_dockerfile_structure_errors(tmp_path: Path, text: str, message: str, line: int | None) -> None:
    report = await check("dockerfile", tmp_path, {"Dockerfile": text})
    assert report.outcome is Outcome.FAILED
    assert any(message in f.message and f.line == line for f in high(report)), report.findings


async def test_dockerfile_reports_an_unpinned_base_and_root_without_failing(tmp_path: Path) -> None:
    report = await check("dockerfile", tmp_path, {"Dockerfile": "FROM python\nCMD python app.py\n"})
    assert report.outcome is Outcome.PASSED
    assert sorted(f.message.split()[0] for f in report.findings) == ["base", "the"]
    assert {f.severity for f in report.findings} == {Severity.LOW}


# ---------------------------------------------------------------- ci-yaml

WORKFLOW = """name: ci
on: [push, pull_request]
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: ruff check .
  test:
    needs: lint
    runs-on: ubuntu-latest
    steps:
      - run: pytest
  release:
    needs: [test]
    uses: ./.github/workflows/release.yml
"""
GITLAB = """stages: [lint, test, build]
variables: {PIP_CACHE_DIR: .cache}
.base: {image: "python:3.11"}
lint: {stage: lint, script: [ruff check .]}
test: {stage: test, extends: .base, script: pytest}
build: {stage: build, script: [docker build .]}
"""


@pytest.mark.parametrize("text", [WORKFLOW, GITLAB])
async def test_ci_yaml_passes_good_pipelines(tmp_path: Path, text: str) -> None:
    report = await check("ci-yaml", tmp_path, {"devops/ci.yaml": text})
    assert report.outcome is Outcome.PASSED, report.findings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            WORKFLOW.replace("    runs-on: ubuntu-latest\n    steps:\n      - uses", "    steps:\n      - uses"),
            "runs-on",
        ),
        (WORKFLOW.replace("on: [push, pull_request]\n", ""), "without `on:`"),
        (WORKFLOW.replace("needs: lint", "needs: nope"), "needs 'nope'"),
        (WORKFLOW.replace("      - run: pytest", "      - name: no action"), "needs `run:` or `uses:`"),
        (GITLAB.replace("stage: build", "stage: deploy"), "stage 'deploy'"),
        (GITLAB.replace("build: {stage: build, script: [docker build .]}", "build: {stage: build}"), "no `script:`"),
        ("name: hello\nvalue: 3\n", "not a recognised CI pipeline"),
        ("jobs: [unclosed\n", "invalid YAML"),
    ],
)
async def test_ci_yaml_finds_broken_pipelines(tmp_path: Path, text: str, message: str) -> None:
    report = await check("ci-yaml", tmp_path, {"devops/ci.yaml": text})
    assert report.outcome is Outcome.FAILED
    assert any(message in f.message for f in report.findings), report.findings


async def test_ci_yaml_applies_to_ci_file_names_only() -> None:
    (ci,) = checks_for(["ci-yaml"])
    assert ci.applies("devops/ci.yaml") and ci.applies(".github/workflows/test.yml") and ci.applies(".gitlab-ci.yml")
    assert not ci.applies("sre/slos.yaml") and not ci.applies("features/flags.yaml")


# ---------------------------------------------------------------- secrets and bandit

PLANTED = """import os

API_KEY = "sk-live-51HzQe2Lk8d7Fa9Xc3Vb"
DATABASE = os.environ["DATABASE_URL"]
password = "hunter2-prod"
token = os.environ.get("TOKEN", "")
secret = "changeme"
"""


async def test_secrets_finds_planted_secrets_as_high(tmp_path: Path) -> None:
    report = await check("secrets", tmp_path, {"backend/app.py": PLANTED})
    assert report.outcome is Outcome.FAILED
    assert [(f.line, f.severity) for f in report.findings] == [(3, Severity.HIGH), (5, Severity.HIGH)]
    assert all("sk-live-51Hz" not in f.message and "hunter2-prod" not in f.message for f in report.findings)


@pytest.mark.parametrize(
    ("name", "text", "severity"),
    [
        (
            "keys/id_rsa.pem",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n",
            Severity.CRITICAL,
        ),
        ("config.js", "const gh = 'ghp_" + "a1B2" * 9 + "';\n", Severity.HIGH),
        ("devops/ci.yaml", "env:\n  AWS_KEY_ID: AKIA" + "Q" * 16 + "\n", Severity.HIGH),
        ("devops/Dockerfile", "FROM python:3.11\nENV DB_PASSWORD=s3cretPassw0rd\n", Severity.HIGH),
        ("docs/README.md", "Connect with `postgresql://app:Zx9-long-pass@db.prod.example.net/app`.\n", Severity.HIGH),
        ("qa/test_app.py", 'password = "correct-horse-battery"\n', Severity.LOW),
    ],
)
async def test_secrets_kinds(tmp_path: Path, name: str, text: str, severity: Severity) -> None:
    report = await check("secrets", tmp_path, {name: text})
    assert [f.severity for f in report.findings] == [severity], report.findings


async def test_secrets_leaves_placeholders_and_references_alone(tmp_path: Path) -> None:
    text = (
        "env:\n  DB_PASSWORD: ${{ secrets.DB_PASSWORD }}\n  API_KEY: <your key>\n  TOKEN: $TOKEN\n"
        "  password: changeme\n  url: postgresql://app:${DB_PASSWORD}@db/app\n"
    )
    code = 'if password == "abcdefgh": pass\nAUTH_TOKEN = "Bearer"\nCSRF_TOKEN = "csrftoken"\n'
    report = await check("secrets", tmp_path, {"devops/ci.yaml": text, "app.py": code})
    assert report.outcome is Outcome.PASSED and report.findings == []


async def test_bandit_maps_its_results_to_findings(tmp_path: Path) -> None:
    code = "import subprocess\n\n\ndef run(command):\n    return subprocess.call(command, shell=True)\n"
    report = await check("bandit", tmp_path, {"backend/app.py": code, "backend/clean.py": GOOD_PY})
    assert report.outcome is Outcome.FAILED
    shell = [f for f in report.findings if "B602" in f.message]
    assert [(f.artifact, f.line, f.severity) for f in shell] == [("backend/app.py", 5, Severity.HIGH)]
    clean = await check("bandit", tmp_path / "clean", {"backend/clean.py": GOOD_PY})
    assert clean.outcome is Outcome.PASSED and clean.findings == []


# (mermaid: tests/unit/verify/test_mermaid.py, with Mermaid's own parser)


# ---------------------------------------------------------------- sql-apply (a twin); code without a sandbox


class ScriptedDatabase:
    """A ScratchDatabase twin: answers each apply from a script (an error text, None, or an exception)."""

    def __init__(self, *answers: str | None | Exception) -> None:
        self.answers = list(answers)
        self.applied: list[str] = []

    async def apply(self, sql: str, *, timeout_s: float) -> str | None:
        self.applied.append(sql)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_sql_apply_reports_postgresql_refusal_with_its_line(tmp_path: Path) -> None:
    error = 'type "nosuchtype" does not exist\nLINE 3:   z nosuchtype\n            ^'
    files = {"database/schema.sql": "CREATE TABLE a (x int);\n", "database/more.sql": "CREATE TABLE b (\n"}
    db = ScriptedDatabase(None, error)
    report = await check("sql-apply", tmp_path, files, database=db)
    assert report.outcome is Outcome.FAILED and db.applied == list(files.values())
    assert [(f.artifact, f.line) for f in report.findings] == [("database/more.sql", 3)]


async def test_sql_apply_without_a_database_or_a_safe_role(tmp_path: Path) -> None:
    files = {"schema.sql": "CREATE TABLE a (x int);"}
    skipped = await check("sql-apply", tmp_path / "a", files)
    assert skipped.outcome is Outcome.SKIPPED and "no scratch PostgreSQL" in skipped.detail
    refused = await check("sql-apply", tmp_path / "b", files, database=ScriptedDatabase(ConfigError("role too strong")))
    assert refused.outcome is Outcome.ERROR and refused.detail == "role too strong"


class UnavailableSandbox:
    async def run(
        self, argv: Sequence[str], *, workdir: Path, policy: SandboxPolicy, env: dict[str, str] | None = None
    ) -> SandboxRun:
        raise SandboxUnavailable("install bubblewrap")


@pytest.mark.parametrize("tool", ["python-import", "pytest"])
async def test_code_is_never_run_without_a_sandbox_or_against_the_policy(tmp_path: Path, tool: str) -> None:
    files = {"test_app.py": "def test_x():\n    assert True\n"}
    none = await check(tool, tmp_path / "a", files)
    assert none.outcome is Outcome.SKIPPED and "no sandbox" in none.detail
    missing = await check(tool, tmp_path / "b", files, sandbox=UnavailableSandbox())
    assert missing.outcome is Outcome.SKIPPED and "install bubblewrap" in missing.detail
    forbidden = await check(
        tool, tmp_path / "c", files, sandbox=UnavailableSandbox(), policy=SandboxPolicy(execute=False)
    )
    assert forbidden.outcome is Outcome.SKIPPED
    assert forbidden.detail == "the team's sandbox policy does not allow running code"


# ---------------------------------------------------------------- runner


class ScriptedCheck:
    """A check whose run crashes, hangs or reports, as told."""

    def __init__(self, name: str, behaviour: str, pattern: str = ".py") -> None:
        self.name = name
        self.behaviour = behaviour
        self.pattern = pattern

    def applies(self, artifact: str) -> bool:
        if self.behaviour == "applies-crash":
            raise RuntimeError("bad pattern")
        return artifact.endswith(self.pattern)

    async def run(self, workspace: Workspace, artifacts: Sequence[str]) -> CheckReport:
        if self.behaviour == "crash":
            raise KeyError("no such field")
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        return CheckReport(check=self.name, outcome=Outcome.PASSED, artifacts=list(artifacts))


async def test_run_checks_reports_a_crash_and_a_hang_and_never_raises(tmp_path: Path) -> None:
    checks = [
        ScriptedCheck("crashes", "crash"),
        ScriptedCheck("hangs", "hang"),
        ScriptedCheck("fine", "ok"),
        ScriptedCheck("not-for-these", "ok", pattern=".sql"),
        ScriptedCheck("broken-applies", "applies-crash"),
    ]
    ws = workspace(tmp_path, {"app.py": GOOD_PY, "NOTES.md": "notes"})
    reports = await run_checks(checks, ws, timeout_s=0.2, concurrency=2)
    by_name = {r.check: r for r in reports}
    assert list(by_name) == ["crashes", "hangs", "fine", "broken-applies"]  # the checks' order; none for .sql
    assert by_name["crashes"].outcome is Outcome.ERROR and "KeyError" in by_name["crashes"].detail
    assert by_name["crashes"].artifacts == ["app.py"]
    assert by_name["hangs"].outcome is Outcome.ERROR
    assert by_name["hangs"].detail == "the check did not finish in 0.2 s"
    assert by_name["fine"].outcome is Outcome.PASSED and by_name["fine"].artifacts == ["app.py"]
    assert by_name["broken-applies"].outcome is Outcome.ERROR and "bad pattern" in by_name["broken-applies"].detail


@pytest.mark.parametrize("name", ["../escape.py", "/etc/passwd", "a/../../b", "", "a\\..\\b"])
def test_write_workspace_refuses_names_outside_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError):
        write_workspace(tmp_path / "ws", {"fine.txt": "x", name: "y"})
    assert not (tmp_path / "ws" / "fine.txt").exists()  # nothing written before the refusal


def test_write_workspace_writes_nested_files_and_refuses_a_symlink_out(tmp_path: Path) -> None:
    write_workspace(tmp_path / "ws", {"a/b/c.py": "x = 1\n", "d.md": "d"})
    assert (tmp_path / "ws" / "a" / "b" / "c.py").read_text() == "x = 1\n"
    (tmp_path / "ws" / "link").symlink_to(tmp_path)
    with pytest.raises(InputError):
        write_workspace(tmp_path / "ws", {"link/out.txt": "y"})
    assert not (tmp_path / "out.txt").exists()


# ---------------------------------------------------------------- figures and feedback


def report(check: str, outcome: Outcome, artifacts: list[str], *findings: Finding, **kw: object) -> CheckReport:
    return CheckReport(check=check, outcome=outcome, artifacts=artifacts, findings=list(findings), **kw)  # type: ignore[arg-type]


def finding(check: str, severity: Severity, message: str = "wrong", artifact: str = "backend/app.py") -> Finding:
    return Finding(check=check, artifact=artifact, message=message, severity=severity)


def test_figures_count_checks_artifacts_tests_and_security_findings() -> None:
    reports = [
        report("python-syntax", Outcome.PASSED, ["backend/app.py"]),
        report(
            "bandit",
            Outcome.FAILED,
            ["backend/app.py"],
            finding("bandit", Severity.HIGH),
            finding("bandit", Severity.LOW),
        ),
        report("secrets", Outcome.FAILED, ["backend/app.py"], finding("secrets", Severity.CRITICAL)),
        report("ruff", Outcome.PASSED, ["backend/app.py"], finding("ruff", Severity.LOW)),
        report("pytest", Outcome.FAILED, ["qa/test_app.py"], tests=Counts(passed=3, failed=1, errors=1)),
        report("python-import", Outcome.SKIPPED, ["backend/other.py"], detail="no sandbox"),
        report("mermaid", Outcome.ERROR, ["backend/NOTES.md"], detail="crashed"),
    ]
    fig = figures(reports, ["backend/app.py", "backend/other.py", "backend/NOTES.md", "qa/test_app.py"])
    assert (fig.checks_run, fig.checks_passed, fig.checks_failed, fig.checks_skipped, fig.checks_errored) == (
        7,
        2,
        3,
        1,
        1,
    )
    assert (fig.artifacts_total, fig.artifacts_checked, fig.share_checked) == (4, 2, 0.5)
    assert (fig.tests_passed, fig.tests_failed) == (3, 2)
    assert fig.security == {"critical": 1, "high": 1, "medium": 0, "low": 1, "info": 0}  # ruff's is not security
    assert fig.model_dump()["share_checked"] == 0.5
    total = merge(fig, figures(reports[:2], ["x.py", "backend/app.py"]))
    assert (total.checks_run, total.artifacts_total, total.artifacts_checked, total.security["high"]) == (9, 6, 3, 2)
    assert merge(Figures(), Figures()).share_checked == 0.0


def test_feedback_lists_failing_checks_worst_first_bounded_and_says_what_to_do() -> None:
    many = [finding("ruff", Severity.LOW, f"style {i}") for i in range(30)]
    long = finding("bandit", Severity.HIGH, "x" * 1000)
    reports = [
        report("ruff", Outcome.FAILED, ["backend/app.py"], *many, finding("ruff", Severity.HIGH, "undefined name")),
        report("bandit", Outcome.FAILED, ["backend/app.py"], long),
        report("python-import", Outcome.ERROR, ["backend/app.py"], detail="the check crashed"),
        report("pytest", Outcome.FAILED, ["qa/test_app.py"], tests=Counts(passed=2, failed=1)),
    ]
    text = feedback(reports)
    lines = text.splitlines()
    findings = [line for line in lines if line.startswith("- [")]
    assert len(findings) == FEEDBACK_FINDINGS
    assert findings[0].startswith("- [ruff, high]") or findings[0].startswith("- [bandit, high]")
    assert max(len(line) for line in findings) < FEEDBACK_MESSAGE_CHARS + 60
    assert "and 12 more findings not shown" in text
    assert "(1 of 3 tests failed)" in text and "python-import" not in text
    assert lines[-1].startswith("Fix every finding")
    assert feedback([report("ruff", Outcome.PASSED, ["a.py"]), report("x", Outcome.ERROR, [], detail="d")]) == ""
