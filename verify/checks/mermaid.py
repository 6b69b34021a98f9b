"""``mermaid``: Mermaid diagrams (``.mmd``/``.mermaid`` files, mermaid blocks in Markdown) parse with
Mermaid's own parser.

No Python parser of Mermaid exists; Mermaid's runs in Node.js with jsdom, offline, installed by
``make install`` into ``verify/mermaid/node_modules`` (``npm ci`` from its committed lock). The check
sends every diagram to ``node verify/mermaid/check.mjs`` at once, as a plain subprocess with a
timeout, a cleared environment and the workspace as its directory: it parses text and runs nothing
of it. A diagram that does not parse is a finding on its file's line (the block's offset plus the
parser's line). Without Node.js or the installed parser, only the diagram type is checked and the
check reports itself skipped with the sentence that says what to run."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from verify.base import CheckReport, Finding, Workspace
from verify.checks._common import CatalogCheck, ToolFailed, read_text, run_tool, tool_env
from verify.registry import ToolSpec

MERMAID_DIR = Path(__file__).resolve().parent.parent / "mermaid"
SCRIPT = MERMAID_DIR / "check.mjs"
TIMEOUT_S = 50.0  # check.mjs stops itself after 40 s (verify/mermaid/check.mjs TOTAL_TIMEOUT_MS)
# check.mjs reads at most 4 MiB of JSON and 500 diagrams of 50 000 characters: sent in batches below
# that, a longer diagram is a finding without being sent.
BATCH_BYTES = 3 * 1024 * 1024
BATCH_DIAGRAMS = 400
MAX_DIAGRAM_CHARS = 50_000
INSTALL = "run `make install`, which needs Node.js and npm (apt-get install nodejs npm)"

DIAGRAM_TYPES = frozenset(
    """flowchart graph sequenceDiagram classDiagram classDiagram-v2 stateDiagram stateDiagram-v2 erDiagram journey
    gantt pie quadrantChart requirementDiagram gitGraph mindmap timeline zenuml sankey-beta sankey xychart-beta
    xychart block-beta block packet-beta packet architecture-beta architecture kanban radar-beta radar treemap-beta
    treemap C4Context C4Container C4Component C4Dynamic C4Deployment info""".split()
)
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*mermaid\b.*$", re.MULTILINE)
_ON_LINE = re.compile(r"\bon line (\d+)")
Item = tuple[str, int, str]  # a diagram: its file, the file's line it starts on, its source


def diagrams(name: str, text: str) -> list[tuple[int, str]]:
    """(first line, source) of each Mermaid diagram in a file."""
    if PurePosixPath(name).suffix.lower() in (".mmd", ".mermaid"):
        return [(1, text)] if text.strip() else []
    found: list[tuple[int, str]] = []
    for fence in _FENCE.finditer(text):
        body_start = fence.end() + 1
        close = re.compile(rf"^[ \t]*{re.escape(fence.group('fence')[0])}{{{len(fence.group('fence'))},}}\s*$", re.M)
        end = close.search(text, body_start)
        body = text[body_start : end.start() if end else len(text)]
        found.append((text.count("\n", 0, body_start) + 1, body))
    return found


def diagram_type(source: str) -> str:
    """The first word of a diagram, past front matter (``---`` … ``---``), directives and comments."""
    lines = source.splitlines()
    i = 0
    if lines and lines[0].strip() == "---":
        i = next((j for j in range(1, len(lines)) if lines[j].strip() == "---"), len(lines)) + 1
    for line in lines[i:]:
        stripped = line.strip()
        if not stripped or stripped.startswith("%%"):
            continue
        return stripped.split()[0].rstrip(":;")
    return ""


class MermaidCheck(CatalogCheck):
    """Findings for diagrams Mermaid's parser refuses; skipped (type checked only) without the parser.

    ``node`` (a name on PATH or a path) and ``modules`` (the installed parser) default to the
    machine's Node.js and ``verify/mermaid/node_modules``."""

    def __init__(
        self, spec: ToolSpec, *, node: str = "node", modules: Path | None = None, timeout_s: float = TIMEOUT_S
    ) -> None:
        super().__init__(spec)
        self.node = node
        self.modules = modules if modules is not None else MERMAID_DIR / "node_modules"
        self.timeout_s = timeout_s

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        found, findings = self._find(workspace, artifacts)
        looked = list(found) or artifacts
        if not found and not findings:
            return self.skipped(artifacts, "no Mermaid diagrams in these files")
        node, missing = self.parser()
        if node is None:
            findings += self._types_only(found)
            return self.report(looked, findings) if findings or not found else self.skipped(looked, missing)
        items: list[Item] = []
        for name, in_file in found.items():
            for first, source in in_file:
                if len(source) <= MAX_DIAGRAM_CHARS:
                    items.append((name, first, source))
                    continue
                message = f"the diagram has {len(source)} characters, more than Mermaid's {MAX_DIAGRAM_CHARS}: split it"
                findings.append(self.finding(name, f"Mermaid: {message}", line=first))
        unchecked: list[str] = []
        for batch in batches(items):
            for (name, first, _), result in zip(batch, await self._parse(node, workspace.root, batch), strict=True):
                if result.get("unchecked"):
                    unchecked.append(f"{name}:{first}: {result.get('error', '')}")
                elif not result.get("ok"):
                    findings.append(self._parse_finding(name, first, result))
        if unchecked and not findings:
            return self.errored(looked, f"{len(unchecked)} diagram(s) not checked; the first: {unchecked[0]}")
        detail = f"{len(unchecked)} more diagram(s) not checked: {unchecked[0]}" if unchecked else ""
        return self.report(looked, findings, detail=detail)

    def _find(
        self, workspace: Workspace, artifacts: list[str]
    ) -> tuple[dict[str, list[tuple[int, str]]], list[Finding]]:
        """The diagrams of each file that has some, and a finding for each file too large to read."""
        found: dict[str, list[tuple[int, str]]] = {}
        findings: list[Finding] = []
        for name in artifacts:
            try:
                in_file = diagrams(name, read_text(workspace, name))
            except ValueError as exc:
                findings.append(self.finding(name, str(exc)))
                continue
            if in_file:
                found[name] = in_file
        return found, findings

    def parser(self) -> tuple[str | None, str]:
        """Node.js's path when Mermaid's parser can run here, else None and what to run."""
        node = shutil.which(self.node, path=tool_env()["PATH"])
        if node is None:
            return None, f"Node.js ({self.node}) is not installed here, so only the diagram type was checked: {INSTALL}"
        if not (self.modules / "mermaid").is_dir() or not (self.modules / "jsdom").is_dir() or not SCRIPT.is_file():
            return (
                None,
                f"Mermaid's parser is not installed in {self.modules}, so only the diagram type was checked: {INSTALL}",
            )
        return node, ""

    def _types_only(self, found: dict[str, list[tuple[int, str]]]) -> list[Finding]:
        findings: list[Finding] = []
        for name, in_file in found.items():
            for line, source in in_file:
                kind = diagram_type(source)
                if kind not in DIAGRAM_TYPES:
                    shown = f"unknown diagram type {kind!r}" if kind else "an empty diagram"
                    message = f"Mermaid {shown}: start with flowchart, sequenceDiagram, …"
                    findings.append(self.finding(name, message, line=line))
        return findings

    def _parse_finding(self, name: str, first: int, result: dict[str, object]) -> Finding:
        line = result.get("line")
        in_file = first + line - 1 if isinstance(line, int) and line >= 1 else first
        # The parser numbers the diagram's own lines; a Markdown block starts further down its file.
        message = _ON_LINE.sub(lambda m: f"on line {first + int(m.group(1)) - 1}", str(result.get("error", "")))
        return self.finding(name, f"Mermaid: {message}", line=in_file)

    async def _parse(self, node: str, cwd: Path, batch: list[Item]) -> list[dict[str, object]]:
        """check.mjs's result for each diagram of the batch, in order."""
        sources: dict[str, list[str]] = {}
        for name, _, source in batch:
            sources.setdefault(name, []).append(source)
        payload = json.dumps(sources).encode()
        code, out, err = await run_with_input([node, str(SCRIPT)], payload, cwd=cwd, timeout_s=self.timeout_s)
        try:
            results = json.loads(out) if code == 0 else None
        except json.JSONDecodeError:
            results = None
        if not isinstance(results, dict) or any(
            not isinstance(results.get(name), list) or len(results[name]) != len(sent) for name, sent in sources.items()
        ):
            raise ToolFailed(f"Mermaid's parser exited {code} without its results: {err.strip()[-500:]}")
        ordered = {name: iter(results[name]) for name in sources}
        return [r if isinstance(r := next(ordered[name]), dict) else {} for name, _, _ in batch]


def batches(items: list[Item]) -> list[list[Item]]:
    """The diagrams in groups check.mjs accepts (at most BATCH_DIAGRAMS, about BATCH_BYTES of JSON)."""
    groups: list[list[Item]] = []
    size = 0
    for item in items:
        cost = len(json.dumps(item[2])) + len(json.dumps(item[0])) + 4
        if not groups or len(groups[-1]) >= BATCH_DIAGRAMS or size + cost > BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += cost
    return groups


async def run_with_input(argv: Sequence[str], data: bytes, *, cwd: Path, timeout_s: float) -> tuple[int, str, str]:
    """``run_tool`` with ``data`` on the parser's stdin; ``ToolFailed`` when it does not finish in time."""
    try:
        return await run_tool(argv, cwd=cwd, timeout_s=timeout_s, stdin=data)
    except TimeoutError as exc:
        raise ToolFailed(f"Mermaid's parser did not finish in {timeout_s:g} s") from exc
