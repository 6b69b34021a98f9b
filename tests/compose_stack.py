"""compose.yaml as ``docker compose config`` would see it, without Docker: the file, the variables of
.env.example, interpolation, and the small parsers the checks share (volumes, ports, URLs).

Interpolation follows the Compose Specification: ``$$`` is a literal ``$``; ``${VAR}`` and ``$VAR``;
``${VAR:-default}`` (unset or empty) and ``${VAR-default}`` (unset); ``${VAR:?message}`` and
``${VAR?message}`` refuse, as compose does, with the message. Only values are interpolated, never keys.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
PROMETHEUS = REPO / "ops" / "prometheus" / "prometheus.yml"

_REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.DOTALL)
_ENV_LINE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1"}


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset (or empty), or a malformed ``${...}``."""


@dataclass(frozen=True)
class Reference:
    """One ``${NAME...}`` in a value: its operator (``""`` for none) and the default or message."""

    name: str
    op: str
    arg: str


def references(text: str) -> list[Reference]:
    """The variables ``text`` refers to, in order (``$$`` escapes are not references)."""
    found = []
    for match in _REFERENCE.finditer(text):
        if match["escaped"]:
            continue
        if match["named"]:
            found.append(Reference(match["named"], "", ""))
            continue
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise InterpolationError(f"malformed ${{{match['braced']}}} in {text!r}")
        found.append(Reference(braced["name"], braced["op"] or "", braced["arg"] or ""))
    return found


#: What ``masked`` puts for each reference.
REF_TOKEN = "__ref__"


def masked(text: str) -> str:
    """``text`` with each variable reference as one token: what is left is literal."""
    return _REFERENCE.sub(lambda m: "$$" if m["escaped"] else REF_TOKEN, text)


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` with its variables replaced from ``env``, as compose does."""

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        (ref,) = references(match[0])
        value = env.get(ref.name)
        if ref.op in (":-", "-"):
            unset = value is None or (ref.op == ":-" and value == "")
            return ref.arg if unset else str(value)
        if ref.op in (":?", "?"):
            if value is None or (ref.op == ":?" and value == ""):
                raise InterpolationError(f"{ref.name}: {ref.arg or 'required'}")
            return value
        if ref.op in (":+", "+"):
            present = value is not None and (ref.op == "+" or value != "")
            return ref.arg if present else ""
        return value or ""

    return _REFERENCE.sub(one, text)


def strings(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every string value in ``tree`` with where it is (keys are not values)."""
    if isinstance(tree, str):
        yield path, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from strings(value, (*path, str(key)))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from strings(value, (*path, str(index)))


def _resolve(tree: Any, env: dict[str, str]) -> Any:
    if isinstance(tree, str):
        return interpolate(tree, env)
    if isinstance(tree, dict):
        return {key: _resolve(value, env) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_resolve(value, env) for value in tree]
    return tree


def env_example(text: str) -> dict[str, str]:
    """The variables of an .env file, in order (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(line.strip())
        if match is None:
            raise ValueError(f".env.example: {line!r} is not NAME=VALUE")
        values[match["name"]] = match["value"]
    return values


def stand_in(name: str) -> str:
    """A stand-in for a secret the operator fills in: distinct per variable (so two values wired to
    each other by mistake are told apart) and the same on every run."""
    return "t" + hashlib.sha256(name.encode()).hexdigest()[:20]


@dataclass
class Stack:
    """The compose file as parsed (anchors merged), the variables it is interpolated with, and the
    Prometheus configuration it mounts; checks read ``resolved``, mutations edit ``raw``."""

    raw: dict[str, Any]
    env: dict[str, str]
    prometheus: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, *, extra: dict[str, str] | None = None) -> Stack:
        """compose.yaml with .env.example's values, each value it leaves empty but compose requires
        filled with a stand-in (what the operator does), then ``extra``."""
        raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
        env = env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))
        required = {r.name for _, text in strings(raw) for r in references(text) if r.op in (":?", "?")}
        env = {name: value or (stand_in(name) if name in required else "") for name, value in env.items()}
        prometheus = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
        return cls(raw, {**env, **(extra or {})}, prometheus)

    def copy(self) -> Stack:
        return Stack(copy.deepcopy(self.raw), dict(self.env), copy.deepcopy(self.prometheus))

    @cached_property
    def resolved(self) -> dict[str, Any]:
        """Interpolated, with ``deploy.replicas`` made a number as compose does."""
        tree: dict[str, Any] = _resolve(self.raw, self.env)
        for service in tree.get("services", {}).values():
            deploy = service.get("deploy") or {}
            if isinstance(deploy.get("replicas"), str) and deploy["replicas"].isdigit():
                deploy["replicas"] = int(deploy["replicas"])
        return tree

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.resolved["services"]
        return services

    def environment(self, service: str) -> dict[str, str]:
        """A service's environment as strings (a list form ``NAME=value`` is read too)."""
        env = self.services[service].get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        return {str(k): "" if v is None else str(v) for k, v in env.items()}

    def container_ports(self, service: str) -> set[int]:
        """The ports a service listens on inside the network: ``expose`` and ``ports``' container side."""
        spec = self.services[service]
        ports = {int(str(p).split("/")[0]) for p in spec.get("expose", [])}
        ports |= {published(p)[1] for p in spec.get("ports", [])}
        return ports

    def mounts(self, service: str) -> list[tuple[str, str, bool]]:
        """(source, target, read-only) of each short-syntax volume of a service."""
        return [mount(v) for v in self.services[service].get("volumes", [])]


def published(spec: Any) -> tuple[int | None, int]:
    """(host port or None, container port) of a short-syntax ``ports`` entry."""
    parts = str(spec).split("/")[0].split(":")
    container = int(parts[-1])
    host = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
    return host, container


def mount(spec: str) -> tuple[str, str, bool]:
    parts = spec.split(":")
    if len(parts) == 1:
        return "", parts[0], False
    return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def urls(text: str) -> list[SplitResult]:
    """The ``scheme://host...`` URLs in ``text``."""
    return [urlsplit(m) for m in re.findall(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", text)]


def command_option(command: Any, option: str) -> str | None:
    """The value after ``option`` (``--port 8000`` or ``--port=8000``) in a list-form command."""
    if not isinstance(command, list):
        return None
    for i, arg in enumerate(command):
        if arg == option and i + 1 < len(command):
            return str(command[i + 1])
        if isinstance(arg, str) and arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None
