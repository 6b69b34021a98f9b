"""The checks of compose.yaml itself (tests/unit/test_compose.py).

Each check takes the stack (tests/compose_stack.py) and returns what is wrong with it, one line per
problem: the tests assert there is nothing, and break a copy of the stack once per check to show
that each one finds what it is for. The factory's own settings are checked separately, in
tests/compose_settings.py, since they need the process environment; the files the stack mounts or is
built from in tests/compose_files.py.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import jsonschema

from tests.compose_stack import (
    ENV_EXAMPLE,
    LOCAL_HOSTS,
    REF_TOKEN,
    REPO,
    Reference,
    Stack,
    command_option,
    env_example,
    is_bind,
    masked,
    published,
    references,
    strings,
    urls,
)

SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose_spec.json"
DOCKERFILE = REPO / "Dockerfile"
#: Names whose values are secrets: given only through variables, never a default, empty in .env.example.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|SALT|TOKEN|(?:^|_)KEY$|AUTH$")
_IMAGE = re.compile(
    r"(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_VERSION_TAG = re.compile(r"\d+\.\d+|\d{4}-\d{2}-\d{2}")  # major.minor at least, or a release date


def _shell(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value or "")


# -- structure ------------------------------------------------------------------------------------


def schema_problems(stack: Stack) -> list[str]:
    """Against the Compose Specification's JSON schema, after interpolation (as compose validates)."""
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(stack.resolved), key=lambda e: list(map(str, e.absolute_path)))
    ]


def image_unpinned(image: str) -> str | None:
    """Why ``image`` is not pinned to a version (a digest pins it too), else None."""
    match = _IMAGE.fullmatch(image)
    if match is None:
        return f"{image!r} is not an image reference"
    if match["digest"]:
        return None
    tag = match["tag"]
    if tag is None:
        return f"{image} names no tag (that is :latest)"
    if not _VERSION_TAG.search(tag):
        return f"{image}: the tag {tag!r} is not a version (give major.minor at least, or a digest)"
    return None


def dockerfile_stages(text: str) -> dict[str, str]:
    """Each stage of a Dockerfile and the image it starts from."""
    stages: dict[str, str] = {}
    for index, match in enumerate(re.finditer(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", text, re.M | re.I)):
        stages[match[2] or str(index)] = match[1]
    return stages


def image_problems(stack: Stack) -> list[str]:
    """Every image pinned; built images from a Dockerfile stage whose base is pinned, never pulled,
    tagged with the project's version."""
    problems = []
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    for stage, base in stages.items():
        if base not in stages and (why := image_unpinned(base)):
            problems.append(f"Dockerfile stage {stage}: {why}")
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, spec in stack.services.items():
        image = spec.get("image")
        if "build" in spec:
            build = spec["build"] if isinstance(spec["build"], dict) else {"context": spec["build"]}
            if (REPO / build.get("context", ".")).resolve() != REPO or build.get(
                "dockerfile", "Dockerfile"
            ) != "Dockerfile":
                problems.append(f"{name}: builds from somewhere other than the repository's Dockerfile")
            if build.get("target") not in stages:
                problems.append(f"{name}: build target {build.get('target')!r} is no stage of the Dockerfile")
            if spec.get("pull_policy") != "build":
                problems.append(f"{name}: a built image needs pull_policy: build (else compose tries to pull {image})")
            if image and not str(image).endswith(f":{version}"):
                problems.append(f"{name}: tag the built image with the project's version ({version}), not {image}")
        elif not image:
            problems.append(f"{name}: neither an image nor a build")
        elif why := image_unpinned(str(image)):
            problems.append(f"{name}: {why}")
    return problems


# -- variables and secrets ----------------------------------------------------------------------


def env_example_problems(text: str) -> list[str]:
    """Every variable of .env.example is explained by a comment above it (in its block), once."""
    problems, seen, explained = [], set(), False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            explained = False
        elif stripped.startswith("#"):
            explained = True
        else:
            name = stripped.split("=", 1)[0]
            if name in seen:
                problems.append(f".env.example: {name} is given twice")
            seen.add(name)
            if not explained:
                problems.append(f".env.example: {name} has no comment saying what it is")
    return problems


def variable_references(stack: Stack) -> dict[str, list[Reference]]:
    found: dict[str, list[Reference]] = {}
    for _, text in strings(stack.raw):
        for ref in references(text):
            found.setdefault(ref.name, []).append(ref)
    return found


def variable_problems(stack: Stack) -> list[str]:
    """Every variable compose reads is documented, and nothing documented is unused; one default and
    one required-ness per variable, equal to .env.example's value; secrets have no value to fall back on."""
    documented = env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))
    refs = variable_references(stack)
    problems = [
        f"{n} is read by compose.yaml but not documented in .env.example" for n in sorted(refs - documented.keys())
    ]
    problems += [
        f"{n} is documented in .env.example but compose.yaml never reads it" for n in sorted(documented.keys() - refs)
    ]
    for name, found in sorted(refs.items()):
        defaults = {r.arg for r in found if r.op in (":-", "-")}
        required = {r.op in (":?", "?") for r in found}
        if len(defaults) > 1:
            problems.append(f"{name} has different defaults: {sorted(defaults)}")
        if len(required) > 1:
            problems.append(f"{name} is required in one place and optional in another")
        if name in documented and defaults and documented[name] not in defaults:
            problems.append(
                f"{name}: compose's default {sorted(defaults)} differs from .env.example's {documented[name]!r}"
            )
        if SECRET_NAME.search(name):
            if documented.get(name):
                problems.append(f"{name} is a secret: .env.example must leave it empty, not give {documented[name]!r}")
            if defaults - {""}:
                problems.append(f"{name} is a secret: compose must not fall back on a value for it")
    return problems + env_example_problems(ENV_EXAMPLE.read_text(encoding="utf-8"))


def secret_problems(stack: Stack) -> list[str]:
    """No literal secret in the file: a secret variable, a URL's password or a password option is one
    ``${VARIABLE}`` and nothing else."""
    problems = []
    for name, spec in stack.raw["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            if SECRET_NAME.search(str(key)) and masked(str(value)) != REF_TOKEN:
                problems.append(f"{name}: {key} must be a ${{VARIABLE}} from .env, not a literal value")
        command = spec.get("command")
        for i, arg in enumerate(command if isinstance(command, list) else []):
            flag = str(arg).lower()
            if flag.startswith("-") and re.search(r"pass|secret|key|token", flag) and i + 1 < len(command):
                if masked(str(command[i + 1])) != REF_TOKEN:
                    problems.append(f"{name}: the value of {arg} in its command must be a ${{VARIABLE}}")
    for path, text in strings(stack.raw):
        for url in urls(masked(text)):
            if url.password is not None and url.password != REF_TOKEN:
                problems.append(f"{'/'.join(path)}: a URL with a literal password")
    return problems


# -- ports, dependencies, addresses, mounts --------------------------------------------------------


def _one_shot(spec: dict[str, Any]) -> bool:
    return str(spec.get("restart", "")) == "no"


def _healthchecked(spec: dict[str, Any]) -> bool:
    check = spec.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable")


def port_problems(stack: Stack) -> list[str]:
    """Host ports unique and explicit; a replicated service publishes none; a service listens where
    its command says."""
    problems: list[str] = []
    owner: dict[int, str] = {}
    for name, spec in stack.services.items():
        replicas = (spec.get("deploy") or {}).get("replicas", 1)
        for entry in spec.get("ports", []):
            host, _ = published(entry)
            if host is None:
                problems.append(f"{name}: {entry} publishes a random host port; name one (or use expose)")
            elif host in owner:
                problems.append(f"host port {host} is published by both {owner[host]} and {name}")
            else:
                owner[host] = name
            if replicas != 1:
                problems.append(f"{name}: {replicas} replicas cannot share host port {entry}")
        if replicas != 1 and "container_name" in spec:
            problems.append(f"{name}: {replicas} replicas cannot share one container_name")
        port = command_option(spec.get("command"), "--port")
        if port is not None and int(port) not in stack.container_ports(name):
            problems.append(f"{name}: its command listens on {port}, which it neither exposes nor publishes")
    return problems


def referenced_services(stack: Stack, name: str) -> set[str]:
    """The services ``name``'s environment reaches: URL hosts, and values that are a service's name."""
    found = set()
    for value in stack.environment(name).values():
        found |= {u.hostname for u in urls(value) if u.hostname}
        if value in stack.services:
            found.add(value)
    return (found & stack.services.keys()) - {name}


def _waits_for(stack: Stack, name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(stack.services[name].get("depends_on") or {})
    while todo:
        current = todo.pop()
        if current in seen or current not in stack.services:
            continue
        seen.add(current)
        todo.extend(stack.services[current].get("depends_on") or {})
    return seen


def dependency_problems(stack: Stack) -> list[str]:
    """Every long-running service has a health check; each dependency exists and is waited for by the
    right condition (healthy, or a one-shot completed); what a service's environment reaches, it waits
    for; no cycle."""
    problems = []
    services = stack.services
    for name, spec in services.items():
        if not _one_shot(spec) and not _healthchecked(spec):
            problems.append(f"{name} runs on but has no health check")
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on as a list waits only for a start; give each a condition")
            depends = dict.fromkeys(depends, {})
        for target, how in depends.items():
            if target not in services:
                problems.append(f"{name} depends on {target}, which is no service")
                continue
            expected = "service_completed_successfully" if _one_shot(services[target]) else "service_healthy"
            if (how or {}).get("condition") != expected:
                problems.append(f"{name} must wait for {target} with {expected}, not {(how or {}).get('condition')}")
        for target in sorted(referenced_services(stack, name) - _waits_for(stack, name)):
            problems.append(f"{name} reaches {target} (its environment names it) but does not wait for it")
        if name in _waits_for(stack, name):
            problems.append(f"{name} waits for itself through its dependencies (a cycle)")
    return problems


def address_problems(stack: Stack) -> list[str]:
    """Each service address in an environment names a service and a port it listens on; each health
    check probes a port of its own service."""
    problems = []
    for name, spec in stack.services.items():
        for key, value in stack.environment(name).items():
            for url in urls(value):
                host = url.hostname
                if host is None or host in LOCAL_HOSTS:
                    continue
                if host not in stack.services:
                    problems.append(f"{name}: {key} names {host}, which is no service")
                    continue
                ports = stack.container_ports(host)
                if url.port is None:
                    problems.append(f"{name}: {key} gives no port for {host}")
                elif url.port not in ports:
                    problems.append(f"{name}: {key} reaches {host}:{url.port}, but {host} listens on {sorted(ports)}")
        test = _shell((spec.get("healthcheck") or {}).get("test"))
        probed = re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)|-p\s+(\d+)", test)
        for port in {int(a or b) for a, b in probed}:
            if port not in stack.container_ports(name):
                problems.append(f"{name}: its health check probes port {port}, which it does not listen on")
    return problems


def mount_problems(stack: Stack) -> list[str]:
    """Named volumes declared (and every declared one used); repository files mounted exist and are
    mounted read-only; no anonymous volume."""
    problems, used = [], set()
    declared = set(stack.resolved.get("volumes") or {})
    for name in stack.services:
        for source, target, read_only in stack.mounts(name):
            if not source:
                problems.append(f"{name}: {target} is an anonymous volume; name it and declare it")
            elif is_bind(source):
                path = (REPO / source).resolve()
                if not path.is_relative_to(REPO):
                    problems.append(f"{name}: {source} is outside the repository")
                elif not path.exists():
                    problems.append(f"{name}: mounts {source}, which does not exist")
                if not read_only:
                    problems.append(f"{name}: mount {source} read-only (:ro); the repository is not the container's")
            else:
                used.add(source)
                if source not in declared:
                    problems.append(f"{name}: volume {source} is not declared under the top-level volumes")
    problems += [f"volume {v} is declared but no service mounts it" for v in sorted(declared - used)]
    return problems
