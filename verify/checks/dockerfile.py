"""``dockerfile``: a Dockerfile's structure (not whether it builds): instructions, their order and
arguments, exec forms that are valid JSON; an unpinned base image or a root user is reported (low).

The parser follows Docker's rules that matter here: comments, the ``escape`` parser directive, line
continuations and heredocs (``RUN <<EOF``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from verify.base import Finding, Severity
from verify.checks._common import FileByFileCheck

INSTRUCTIONS = frozenset(
    "ADD ARG CMD COPY ENTRYPOINT ENV EXPOSE FROM HEALTHCHECK LABEL MAINTAINER ONBUILD RUN SHELL STOPSIGNAL USER "
    "VOLUME WORKDIR".split()
)
EXEC_FORM = frozenset({"CMD", "ENTRYPOINT", "RUN", "SHELL", "VOLUME"})
_DIRECTIVE = re.compile(r"^#\s*(\w+)\s*=\s*(\S+)\s*$")
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_ARG_REF = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}?")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-cased as written
    value: str
    line: int  # 1-based line of its first line


def _escape_char(lines: list[str]) -> str:
    for raw in lines:  # parser directives come first, before any comment, blank line or instruction
        found = _DIRECTIVE.match(raw.strip())
        if not found:
            break
        if found.group(1).lower() == "escape" and found.group(2) in ("\\", "`"):
            return found.group(2)
    return "\\"


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined and heredoc bodies skipped."""
    lines = text.splitlines()
    escape = _escape_char(lines)
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start, parts = i, []
        while True:
            piece = lines[i].rstrip()
            i += 1
            if piece.endswith(escape) and i < len(lines):
                parts.append(piece[:-1])
                while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                    i += 1  # comments and blank lines inside a continuation are dropped
                continue
            parts.append(piece)
            break
        joined = " ".join(p.strip() for p in parts)
        keyword, _, value = joined.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start + 1))
        if keyword.upper() in ("RUN", "COPY", "ADD"):
            for strip_tabs, _, word in _HEREDOC.findall(value):
                while i < len(lines) and (lines[i].lstrip("\t") if strip_tabs else lines[i]).rstrip() != word:
                    i += 1
                i += 1
    return out


def _substitute(value: str, args: dict[str, str]) -> str:
    return _ARG_REF.sub(lambda m: args.get(m.group(1), m.group(2) or ""), value)


class DockerfileCheck(FileByFileCheck):
    """Findings per Dockerfile; structure problems are high, advisories low."""

    def inspect_file(self, name: str, text: str) -> list[Finding]:
        return self.inspect(name, text)

    def inspect(self, name: str, text: str) -> list[Finding]:
        found = parse(text)
        if not found:
            return [self.finding(name, "the Dockerfile has no instructions; it must start with FROM")]
        findings: list[Finding] = []
        for ins in found:
            if ins.keyword not in INSTRUCTIONS:
                findings.append(self.finding(name, f"unknown instruction {ins.keyword!r}", line=ins.line))
            elif not ins.value:
                findings.append(self.finding(name, f"{ins.keyword} needs arguments", line=ins.line))
            elif ins.keyword in EXEC_FORM and ins.value.startswith("[") and not _json_strings(ins.value):
                message = f"{ins.keyword}'s exec form is not a JSON array of double-quoted strings: {ins.value[:120]}"
                findings.append(self.finding(name, message, line=ins.line))
        return findings + self._order(name, found) + self._advice(name, found)

    def _order(self, name: str, found: list[Instruction]) -> list[Finding]:
        for ins in found:
            if ins.keyword == "FROM":
                return []
            if ins.keyword != "ARG":
                message = f"the first instruction must be FROM (after optional ARGs), not {ins.keyword}"
                return [self.finding(name, message, line=ins.line)]
        return [self.finding(name, "no FROM instruction: a Dockerfile must name its base image")]

    def _advice(self, name: str, found: list[Instruction]) -> list[Finding]:
        args: dict[str, str] = {}
        stages: set[str] = set()
        findings: list[Finding] = []
        user: Instruction | None = None
        seen_from = False
        for ins in found:
            if ins.keyword == "ARG" and not seen_from:  # only ARGs before the first FROM apply to FROM
                key, _, default = ins.value.partition("=")
                args[key.strip()] = default.strip().strip("\"'")
            elif ins.keyword == "FROM":
                seen_from = True
                words = [w for w in ins.value.split() if not w.startswith("--")]
                image = _substitute(words[0], args) if words else ""
                if len(words) >= 3 and words[1].lower() == "as":
                    stages.add(words[2].lower())
                if image and image.lower() not in stages and image != "scratch" and not _pinned(image):
                    message = f"base image {image!r} is not pinned to a version tag or digest"
                    findings.append(self.finding(name, message, severity=Severity.LOW, line=ins.line))
                user = None  # USER is per stage: the final stage's counts
            elif ins.keyword == "USER":
                user = ins
        if user is None or user.value.split(":")[0] in ("root", "0"):
            message = "the final stage runs as root: add a USER with a non-root user"
            findings.append(self.finding(name, message, severity=Severity.LOW, line=user.line if user else None))
        return findings


def _json_strings(value: str) -> bool:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return False
    return isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")
