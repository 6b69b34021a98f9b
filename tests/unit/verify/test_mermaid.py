"""The mermaid check with Mermaid's own parser (Node.js, verify/mermaid, installed by tests/npm.py as
`make install` does): good and broken diagrams in .mmd files and Markdown blocks, findings on the
file's line, hostile text inert, the parser's own bounds, and the sentence when the parser is missing."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.npm import ensure_mermaid
from verify.base import Check, CheckReport, Outcome, SandboxPolicy, Workspace
from verify.checks.mermaid import BATCH_DIAGRAMS, MAX_DIAGRAM_CHARS, SCRIPT, MermaidCheck, batches
from verify.registry import catalog, checks_for
from verify.runner import run_checks, write_workspace

FLOW = (
    "flowchart TD\n  Start([Open the app]) --> Login{Signed in?}\n"
    "  Login -- yes --> Home[Dashboard]\n  Login -- no --> SignIn[Sign-in form]\n"
)
SEQUENCE = "sequenceDiagram\n  participant U as User\n  participant API\n  U->>API: POST /links\n  API-->>U: 201\n"
FLOW_BROKEN = "flowchart TD\n  A[Start] --> B\n  B --> \n"  # line 3: an arrow to nothing
SEQUENCE_BROKEN = "sequenceDiagram\n  Alice->>Bob: hello\n  Bob-x\n  Bob->>Alice: hi\n"  # line 3: no target


def markdown(*blocks: str) -> str:
    """A Markdown file with a heading, some prose and each block fenced as mermaid."""
    parts = ["# User flows", "", "How a visitor gets in.", ""]
    for block in blocks:
        parts += ["```mermaid", block.rstrip("\n"), "```", "", "Notes after the diagram.", ""]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def node() -> str:
    return ensure_mermaid()


async def run(root: Path, files: Mapping[str, str], check: Check | None = None) -> CheckReport:
    write_workspace(root, files)
    workspace = Workspace(root=root, targets=list(files), policy=SandboxPolicy(execute=False))
    reports = await run_checks([check or MermaidCheck(catalog()["mermaid"])], workspace, timeout_s=120)
    assert len(reports) == 1, reports
    return reports[0]


def where(report: CheckReport) -> list[tuple[str, int | None]]:
    return [(f.artifact, f.line) for f in report.findings]


async def test_good_flowcharts_and_sequences_pass_in_mmd_files_and_markdown(node: str, tmp_path: Path) -> None:
    files = {"ux/flows.md": markdown(FLOW, SEQUENCE), "arch/login.mmd": FLOW, "arch/api.mermaid": SEQUENCE}
    report = await run(tmp_path, files, checks_for(["mermaid"])[0])
    assert report.outcome is Outcome.PASSED, report
    assert report.findings == [] and report.artifacts == list(files)


async def test_a_broken_diagram_is_a_finding_on_its_files_line(node: str, tmp_path: Path) -> None:
    doc = markdown(FLOW, SEQUENCE_BROKEN)  # the second block's body starts on line 15
    assert doc.splitlines()[16] == "  Bob-x"
    files = {"ux/flows.md": doc, "arch/login.mmd": FLOW_BROKEN, "arch/ok.mmd": SEQUENCE, "README.md": "# none\n"}
    report = await run(tmp_path, files)
    assert report.outcome is Outcome.FAILED
    assert where(report) == [("ux/flows.md", 17), ("arch/login.mmd", 3)]
    sequence, flow = report.findings
    assert sequence.message.startswith("Mermaid: Parse error on line 17:") and "Expecting" in sequence.message
    assert flow.message.startswith("Mermaid: Parse error on line 3:") and "got 'EOF'" in flow.message
    assert report.artifacts == ["ux/flows.md", "arch/login.mmd", "arch/ok.mmd"]  # files with diagrams


async def test_lines_count_front_matter_directives_and_comments(node: str, tmp_path: Path) -> None:
    block = (
        "---\ntitle: Checkout\n---\n%%{init: {'theme': 'dark'}}%%\n%% the happy path first\n\n"
        "flowchart LR\n  Cart --> Pay\n  Pay -->>> Done\n"
    )
    report = await run(tmp_path, {"ux/checkout.md": markdown(block), "ux/checkout.mmd": block})
    body = 6  # the block's first line in the Markdown file
    assert where(report) == [("ux/checkout.md", body + 8), ("ux/checkout.mmd", 9)]
    assert f"on line {body + 8}:" in report.findings[0].message


async def test_other_diagram_types_parse_with_their_own_grammars(node: str, tmp_path: Path) -> None:
    files = {
        "a/classes.mmd": "classDiagram\n  class Link {\n    +str url\n    +shorten() str\n  }\n",
        "a/states.mmd": "stateDiagram-v2\n  [*] --> Draft\n  Draft --> Published\n",
        "a/er.mmd": "erDiagram\n  USER ||--o{ LINK : owns\n",
        "a/pie.mmd": 'pie title Clicks\n  "mobile" : 60\n  "desktop" : 40\n',
        "a/pie-broken.mmd": 'pie title Clicks\n  "mobile" : 60\n  "desktop" : lots\n',
    }
    report = await run(tmp_path, files)
    assert where(report) == [("a/pie-broken.mmd", 3)]
    assert "Parse error on line 3" in report.findings[0].message


async def test_an_unknown_or_empty_diagram_type_is_a_finding_on_its_first_line(node: str, tmp_path: Path) -> None:
    doc = markdown(FLOW.replace("flowchart TD", "flowchat TD"))
    report = await run(tmp_path, {"ux/flows.md": doc, "arch/empty.md": "# Empty\n\n```mermaid\n%% nothing yet\n```\n"})
    assert where(report) == [("ux/flows.md", 6), ("arch/empty.md", 4)]
    assert 'unknown diagram type "flowchat"' in report.findings[0].message
    assert "an empty diagram" in report.findings[1].message


async def test_no_diagrams_is_skipped(node: str, tmp_path: Path) -> None:
    report = await run(tmp_path, {"ux/wireframes.md": "# Wireframes\n\n```text\nflowchart TD\n```\n"})
    assert report.outcome is Outcome.SKIPPED and "no Mermaid diagrams" in report.detail


HOSTILE = [
    'flowchart TD\n  A["<script>require(`child_process`).execSync(`touch MARKER`)</script>"] --> B\n'
    "  click A call process.exit(3)\n  click B href \"javascript:require('fs').writeFileSync('MARKER','x')\"\n",
    '%%{init: {"securityLevel": "loose", "startOnLoad": true, "maxTextSize": 99999999}}%%\n'
    'flowchart TD\n  A["<img src=http://127.0.0.1:9/x onerror=\\"fetch(`http://127.0.0.1:9`)\\">"] --> B\n',
    "sequenceDiagram\n  Alice->>Bob: ${process.exit(4)} $(touch MARKER) `touch MARKER`\n",
    "graph TD\n  A-->B\n%% '); require('fs').writeFileSync('MARKER', 'x'); //\n",
]


async def test_hostile_diagrams_are_only_parsed(node: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "MARKER"
    hostile = [h.replace("MARKER", str(marker)) for h in HOSTILE]
    evil = tmp_path / "evil.cjs"
    evil.write_text(f"require('fs').writeFileSync({json.dumps(str(marker))}, 'env')\n")
    monkeypatch.setenv("NODE_OPTIONS", f"--require {evil}")  # the parser runs with a cleared environment
    # The workspace is the parser's working directory: a team's own "mermaid" there is never loaded.
    trap = f"require('fs').writeFileSync({json.dumps(str(marker))}, 'workspace')\n"
    files = {
        "docs/diagrams.md": markdown(*hostile),
        "docs/one.mmd": hostile[0],
        "node_modules/mermaid/package.json": '{"name": "mermaid", "main": "index.js", "exports": "./index.js"}\n',
        "node_modules/mermaid/index.js": trap,
        "node_modules/jsdom/package.json": '{"name": "jsdom", "main": "index.js"}\n',
        "node_modules/jsdom/index.js": trap,
        "package.json": '{"type": "commonjs", "imports": {"#x": "./x.js"}}\n',
    }
    report = await run(tmp_path / "ws", files)
    assert report.outcome in (Outcome.PASSED, Outcome.FAILED), report
    assert {f.artifact for f in report.findings} <= {"docs/diagrams.md", "docs/one.mmd"}
    assert not marker.exists()


async def test_a_diagram_longer_than_mermaid_renders_is_a_finding_without_parsing(node: str, tmp_path: Path) -> None:
    long = "flowchart TD\n" + "".join(f"  N{i}[{'x' * 40}]\n" for i in range(MAX_DIAGRAM_CHARS // 40))
    report = await run(tmp_path, {"arch/huge.mmd": long, "arch/ok.mmd": FLOW})
    assert where(report) == [("arch/huge.mmd", 1)] and "split it" in report.findings[0].message


def test_batches_stay_within_what_the_parser_reads() -> None:
    items = [("a.md", n, "graph TD\n  A-->B\n") for n in range(BATCH_DIAGRAMS + 3)]
    assert [len(b) for b in batches(items)] == [BATCH_DIAGRAMS, 3]
    large = [("a.mmd", 1, "x" * 40_000)] * 200  # 8 MB of diagrams
    groups = batches(large)
    assert len(groups) == 3 and sum(map(len, groups)) == 200 and batches([]) == []


# ---------------------------------------------------------------- without the parser


async def test_without_node_the_check_is_skipped_saying_what_to_run(tmp_path: Path) -> None:
    check = MermaidCheck(catalog()["mermaid"], node=str(tmp_path / "no-node"))
    report = await run(tmp_path / "a", {"ux/flows.md": markdown(FLOW_BROKEN)}, check)
    assert report.outcome is Outcome.SKIPPED and report.findings == []
    assert "Node.js" in report.detail and "run `make install`, which needs Node.js and npm" in report.detail
    unknown = await run(tmp_path / "b", {"ux/flows.md": markdown("flowchat TD\n  A --> B\n")}, check)
    assert unknown.outcome is Outcome.FAILED and where(unknown) == [("ux/flows.md", 6)]  # the type is still checked


async def test_without_the_installed_parser_the_check_is_skipped_saying_what_to_run(tmp_path: Path) -> None:
    check = MermaidCheck(catalog()["mermaid"], modules=tmp_path / "node_modules")
    report = await run(tmp_path / "a", {"arch/login.mmd": FLOW}, check)
    assert report.outcome is Outcome.SKIPPED
    assert str(tmp_path / "node_modules") in report.detail and "`make install`" in report.detail


async def test_a_parser_that_does_not_finish_is_an_error_of_the_check(node: str, tmp_path: Path) -> None:
    check = MermaidCheck(catalog()["mermaid"], timeout_s=0.05)
    report = await run(tmp_path, {"arch/login.mmd": FLOW}, check)
    assert report.outcome is Outcome.ERROR and "did not finish in 0.05 s" in report.detail


# ---------------------------------------------------------------- check.mjs itself


def parse(node: str, stdin: bytes, script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [node, str(script)], input=stdin.decode(), capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_the_parser_refuses_bad_and_oversized_input(node: str) -> None:
    for stdin, reason in [
        (b"not json", "not valid JSON"),
        (b'["graph TD"]', "must be a JSON object"),
        (b'{"a.mmd": "graph TD"}', "must be a list of diagram sources"),
        (json.dumps({"a.mmd": ["graph TD\n"] * 501}).encode(), "more than the 500"),
        (b'{"a.mmd": ["' + b"x" * (4 * 1024 * 1024) + b'"]}', "larger than 4194304 bytes"),
    ]:
        done = parse(node, stdin)
        assert done.returncode == 2 and reason in done.stderr and done.stdout == "", (reason, done.stderr)


def test_the_parser_answers_each_diagram_in_order(node: str) -> None:
    done = parse(node, json.dumps({"a.mmd": [FLOW, FLOW_BROKEN], "b.md": [SEQUENCE, "flowchat TD\n"]}).encode())
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["a.mmd"][0] == {"ok": True, "type": "flowchart-v2"} and results["b.md"][0]["ok"] is True
    assert (results["a.mmd"][1]["ok"], results["a.mmd"][1]["line"]) == (False, 3)
    assert (results["b.md"][1]["ok"], results["b.md"][1]["line"]) == (False, 1)


def test_a_diagram_the_parser_does_not_finish_is_reported_and_the_rest_go_on(node: str, tmp_path: Path) -> None:
    """check.mjs with a 1 ms budget per diagram and two workers at most (a copy beside the same modules)."""
    text = SCRIPT.read_text()
    for old, new in [("DIAGRAM_TIMEOUT_MS = 5_000", "DIAGRAM_TIMEOUT_MS = 1"), ("MAX_WORKERS = 4", "MAX_WORKERS = 2")]:
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "check.mjs").write_text(text)
    (tmp_path / "node_modules").symlink_to(SCRIPT.parent / "node_modules")
    slow = "flowchart TD\n" + "".join(f"  N{i} --> N{i + 1}\n" for i in range(400))
    done = parse(node, json.dumps({"a.mmd": [slow, slow, FLOW]}).encode(), tmp_path / "check.mjs")
    assert done.returncode == 0, done.stderr
    first, second, third = json.loads(done.stdout)["a.mmd"]
    assert "did not finish this diagram" in first["error"] and "did not finish this diagram" in second["error"]
    assert third["unchecked"] is True and "stopped on 2 earlier diagrams" in third["error"]
