"""``data-parse``: YAML (the safe loader), JSON and TOML files parse; an error names its line."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import PurePosixPath

import yaml

from verify.base import Finding
from verify.checks._common import FileByFileCheck

MAX_ALIASES = 200  # more YAML aliases than this is refused: "billion laughs" expands in memory
_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")


class DataParseError(ValueError):
    """A data file that does not parse, with the 1-based line of the error when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def parse_yaml(text: str) -> list[object]:
    """Every document of a YAML stream, by the safe loader; ``DataParseError`` when it does not parse."""
    try:
        aliases = sum(isinstance(t, yaml.AliasToken) for t in yaml.scan(text, Loader=yaml.SafeLoader))
        if aliases > MAX_ALIASES:
            raise DataParseError(f"{aliases} YAML aliases (more than {MAX_ALIASES}); refused unexpanded")
        return list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise DataParseError(f"invalid YAML: {' '.join(str(exc).split())}", line) from exc
    except yaml.YAMLError as exc:
        raise DataParseError(f"invalid YAML: {exc}") from exc


def parse_json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataParseError(f"invalid JSON: {exc}", exc.lineno) from exc
    except RecursionError as exc:
        raise DataParseError("invalid JSON: nested too deeply to parse") from exc


def parse_toml(text: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT.search(str(exc))
        raise DataParseError(f"invalid TOML: {exc}", int(found.group(1)) if found else None) from exc


def parse_data(name: str, text: str) -> object:
    """A YAML, JSON or TOML file's content by its suffix (YAML: the list of its documents)."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".json":
        return parse_json(text)
    if suffix == ".toml":
        return parse_toml(text)
    return parse_yaml(text)


class DataParseCheck(FileByFileCheck):
    """One finding per file that does not parse (its line, where the parser says)."""

    def inspect_file(self, name: str, text: str) -> list[Finding]:
        if not text.strip():
            return [self.finding(name, "the file is empty")]
        parse_data(name, text)  # a DataParseError (a ValueError with its line) is the finding
        return []
