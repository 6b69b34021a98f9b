"""``mermaid``: Mermaid diagrams (``.mmd``/``.mermaid`` files, mermaid blocks in Markdown).

No maintained offline Mermaid syntax checker exists on PyPI (the catalog's note says why), so this
check only confirms each diagram names a diagram type Mermaid knows: an unknown or missing type is a
finding; otherwise the check is reported skipped with the catalog's sentence, never passed."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from verify.base import CheckReport, Finding, Workspace
from verify.checks._common import CatalogCheck, read_text

DIAGRAM_TYPES = frozenset(
    """flowchart graph sequenceDiagram classDiagram classDiagram-v2 stateDiagram stateDiagram-v2 erDiagram journey
    gantt pie quadrantChart requirementDiagram gitGraph mindmap timeline zenuml sankey-beta sankey xychart-beta
    xychart block-beta block packet-beta packet architecture-beta architecture kanban radar-beta radar treemap-beta
    treemap C4Context C4Container C4Component C4Dynamic C4Deployment info""".split()
)
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*mermaid\b.*$", re.MULTILINE)


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
    """Findings for diagrams of an unknown type; otherwise skipped with the catalog's note."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        findings: list[Finding] = []
        looked: list[str] = []
        for name in artifacts:
            try:
                found = diagrams(name, read_text(workspace, name))
            except ValueError as exc:
                findings.append(self.finding(name, str(exc)))
                continue
            if found:
                looked.append(name)
            for line, source in found:
                kind = diagram_type(source)
                if kind not in DIAGRAM_TYPES:
                    shown = f"unknown diagram type {kind!r}" if kind else "an empty diagram"
                    findings.append(
                        self.finding(name, f"Mermaid {shown}: start with flowchart, sequenceDiagram, …", line=line)
                    )
        if findings:
            return self.report(looked or artifacts, findings)
        if not looked:
            return self.skipped(artifacts, "no Mermaid diagrams in these files")
        return self.skipped(looked, self.spec.note or "the diagrams name known types; nothing else was checked")
