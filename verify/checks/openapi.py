"""``openapi``: OpenAPI documents validate against the specification (openapi-spec-validator).

References are resolved offline only: a relative ``$ref`` to a file inside the workspace is read, a
remote one (``http(s)://``) or one leaving the workspace is reported, never fetched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from verify.base import CheckReport, Finding, Workspace
from verify.checks._common import CatalogCheck, read_text
from verify.checks.data_parse import DataParseError, parse_data, parse_yaml

MAX_ERRORS = 25  # per document


class RefRefused(ValueError):
    """A ``$ref`` the check will not follow (remote, or outside the workspace)."""


def confined_handler(root: Path) -> Callable[[str], Any]:
    """A resolver for ``file:`` references inside ``root`` only (read with the safe YAML loader)."""
    top = root.resolve()

    def handle(uri: str) -> Any:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise RefRefused(f"$ref {uri!r} is not fetched: checks run offline; put the schema in the document")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(top) or not path.is_file():
            raise RefRefused(f"$ref {uri!r} names no file of the delivery")
        docs = parse_yaml(path.read_text(encoding="utf-8", errors="replace"))
        return docs[0] if len(docs) == 1 else docs

    return handle


def line_of(text: str, path: Iterable[object]) -> int | None:
    """The 1-based line of the node at ``path`` (keys and indexes) in a YAML/JSON text, or of the
    deepest node found on the way."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for step in path:
        child: yaml.Node | None = None
        at: yaml.Node | None = None  # where the step is written: a mapping's key, a sequence's item
        if isinstance(node, yaml.MappingNode):
            at, child = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(step)), (None, None))
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
            at = child = node.value[step]
        if child is None or at is None:
            break
        node, line = child, at.start_mark.line + 1
    return line


class OpenAPICheck(CatalogCheck):
    """Findings: the document does not parse, is not OpenAPI, or breaks the specification."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        findings: list[Finding] = []
        for name in artifacts:
            findings += await asyncio.to_thread(self._validate, workspace, name)
        return self.report(artifacts, findings)

    def _validate(self, workspace: Workspace, name: str) -> list[Finding]:
        from openapi_spec_validator.shortcuts import get_validator_cls
        from openapi_spec_validator.validation.exceptions import ValidatorDetectError

        try:
            text = read_text(workspace, name)
            spec = parse_data(name, text)
        except DataParseError as exc:
            return [self.finding(name, str(exc), line=exc.line)]
        except ValueError as exc:
            return [self.finding(name, str(exc))]
        if isinstance(spec, list):
            if len(spec) != 1:
                return [self.finding(name, f"expected one YAML document, found {len(spec)}")]
            spec = spec[0]
        if not isinstance(spec, dict):
            return [self.finding(name, "not an OpenAPI document: the top level is not a mapping", line=1)]
        try:
            cls = get_validator_cls(spec)
        except ValidatorDetectError:
            version = spec.get("openapi", spec.get("swagger"))
            detail = f"unsupported version {version!r}" if version is not None else "no 'openapi: 3.x' field"
            return [self.finding(name, f"not an OpenAPI document: {detail}", line=1)]
        handler = confined_handler(workspace.root)
        handlers = {"<all_urls>": handler, "file": handler, "http": handler, "https": handler}
        confined = type(f"Offline{cls.__name__}", (cls,), {"resolver_handlers": handlers})
        validator = confined(spec, base_uri=(workspace.root / name).resolve().as_uri())
        findings: list[Finding] = []
        try:
            for error in validator.iter_errors():
                where = " > ".join(str(p) for p in error.absolute_path)
                message = f"{error.message}" + (f" (at {where})" if where else "")
                findings.append(self.finding(name, message, line=line_of(text, error.absolute_path)))
                if len(findings) >= MAX_ERRORS:
                    findings.append(self.finding(name, f"more errors not listed (first {MAX_ERRORS} shown)"))
                    break
        except Exception as exc:  # an unresolvable reference surfaces as the resolver's own error
            refused = _refused(exc)
            reason = str(exc).split(" within ", 1)[0]  # the resolver appends the whole document
            message = str(refused) if refused else f"unresolvable reference: {type(exc).__name__}: {reason}"
            findings.append(self.finding(name, message))
        return findings


def _refused(exc: BaseException) -> RefRefused | None:
    """Our own refusal of a ``$ref``, however deep the resolver wrapped it."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, RefRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
