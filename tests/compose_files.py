"""The files compose.yaml mounts or is built from, checked with it (tests/unit/test_compose.py):
Prometheus' configuration, Grafana's provisioning and dashboards, the Dockerfile and .dockerignore,
and the README's recipe for .env. Like tests/compose_checks.py, each check returns its problems."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.compose_checks import variable_references
from tests.compose_stack import ENV_EXAMPLE, REPO, Stack, command_option, env_example, is_bind, strings, urls

DOCKERIGNORE = REPO / ".dockerignore"
README = REPO / "README.md"
README_SECTION = "## Full stack (compose)"


# -- what the stack mounts: Prometheus, Grafana ----------------------------------------------------


def _mounted(stack: Stack, service: str) -> dict[str, str]:
    """Container path → repository path of a service's bind mounts (and of what is inside them)."""
    return {target: source for source, target, _ in stack.mounts(service) if is_bind(source)}


def _repo_path(stack: Stack, service: str, container_path: str) -> str | None:
    """The repository file behind ``container_path`` in ``service``, through its bind mounts."""
    for target, source in _mounted(stack, service).items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source + container_path[len(target) :]
    return None


def _service_port(stack: Stack, where: str, host: str, port: int) -> list[str]:
    if host not in stack.services:
        return [f"{where}: {host} is no service"]
    if port not in stack.container_ports(host):
        return [f"{where}: {host}:{port}, but {host} listens on {sorted(stack.container_ports(host))}"]
    return []


def prometheus_problems(stack: Stack) -> list[str]:
    """Prometheus reads the mounted config and rule files; each scrape target is a real service and
    port; the app (at its chat port) and every worker replica (at its metrics port) are scraped."""
    problems = []
    config_file = command_option(stack.services["prometheus"].get("command"), "--config.file")
    if config_file is None or _repo_path(stack, "prometheus", config_file) != "./ops/prometheus/prometheus.yml":
        problems.append("prometheus: --config.file is not ops/prometheus/prometheus.yml as mounted")
    for rule in stack.prometheus.get("rule_files") or []:
        source = _repo_path(stack, "prometheus", rule)
        if source is None:
            problems.append(f"prometheus: rule file {rule} is not mounted")
        elif not (REPO / source).is_file():
            problems.append(f"prometheus: rule file {rule} is mounted from {source}, which does not exist")
    static: set[tuple[str, int]] = set()
    discovered: set[tuple[str, int]] = set()
    for job in stack.prometheus.get("scrape_configs") or []:
        where = f"prometheus job {job.get('job_name')}"
        for group in job.get("static_configs") or []:
            for target in group.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                static.add((host, int(port)))
                problems += _service_port(stack, where, host, int(port))
        for sd in job.get("dns_sd_configs") or []:
            for host in sd.get("names") or []:
                discovered.add((host, int(sd.get("port", 0))))
                problems += _service_port(stack, where, host, int(sd.get("port", 0)))
    chat_port = command_option(stack.services["app"].get("command"), "--port")
    if chat_port is None or ("app", int(chat_port)) not in static:
        problems.append(f"prometheus does not scrape the app at app:{chat_port}")
    for name in stack.services:
        metrics = stack.environment(name).get("FACTORY_METRICS_PORT")
        if metrics and (name, int(metrics)) not in discovered:
            problems.append(f"prometheus does not find every {name} replica (dns_sd_configs on {name}:{metrics})")
    return problems


def _yaml_files(folder: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.glob("*.y*ml")):
        yield yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _dashboard_uids(dashboard: dict[str, Any]) -> set[str]:
    """The data source uids a dashboard uses; a ``${var}`` stands for its variable's current value."""
    variables = {
        v.get("name"): str((v.get("current") or {}).get("value"))
        for v in (dashboard.get("templating") or {}).get("list", [])
        if v.get("type") == "datasource"
    }
    uids = set()
    for path, text in strings(dashboard):
        if len(path) >= 2 and path[-2] == "datasource" and path[-1] == "uid":
            var = re.fullmatch(r"\$\{?(\w+)\}?", text)
            uids.add(variables.get(var[1], text) if var else text)
    return uids


def grafana_problems(stack: Stack) -> list[str]:
    """Grafana's provisioning is mounted; its data sources are real services; its dashboard provider
    reads the mounted dashboards folder, whose dashboards use a provisioned data source."""
    provisioning = _repo_path(stack, "grafana", "/etc/grafana/provisioning")
    if provisioning is None:
        return ["grafana: /etc/grafana/provisioning is not mounted from the repository"]
    folder = REPO / provisioning
    sources = [d for f in _yaml_files(folder / "datasources") for d in f.get("datasources") or []]
    problems = [] if sources else ["grafana: no data source is provisioned"]
    for source in sources:
        for url in urls(str(source.get("url", ""))):
            problems += _service_port(
                stack, f"grafana data source {source.get('name')}", url.hostname or "", url.port or 0
            )
    uids = {str(s.get("uid")) for s in sources}
    providers = [p for f in _yaml_files(folder / "dashboards") for p in f.get("providers") or []]
    if not providers:
        problems.append("grafana: no dashboard provider is provisioned")
    for provider in providers:
        path = str((provider.get("options") or {}).get("path"))
        source = _repo_path(stack, "grafana", path)
        if source is None or not (REPO / source).is_dir():
            problems.append(f"grafana: dashboards path {path} is not a mounted folder of the repository")
            continue
        for file in sorted((REPO / source).glob("*.json")):
            for uid in sorted(_dashboard_uids(json.loads(file.read_text(encoding="utf-8"))) - uids):
                problems.append(f"grafana: {file.name} uses data source {uid!r}, which is not provisioned")
    return problems


# -- the image build and the README ---------------------------------------------------------------


def build_problems(dockerfile: str, dockerignore: str) -> list[str]:
    """The app image installs as `make install` does; the build context leaves out what is local or secret."""
    problems = []
    app = dockerfile.split("AS app", 1)[0]  # the stages the app image is built from
    if not re.search(r"uv pip install [^\n]*-r requirements\.lock", app):
        problems.append("Dockerfile: the app's dependencies must come from requirements.lock")
    if not re.search(r"uv pip install [^\n]*--no-deps -e \.", app):
        problems.append("Dockerfile: the project must be installed with --no-deps -e . (nothing resolved again)")
    if not re.search(r"requirements-proxy\.lock", dockerfile.split("AS litellm", 1)[-1]):
        problems.append("Dockerfile: the proxy must be installed from requirements-proxy.lock")
    ignored = {line.strip().rstrip("/") for line in dockerignore.splitlines()}
    for needed in (".env", ".venv", ".git", "factory.toml"):
        if needed not in ignored:
            problems.append(f".dockerignore must leave {needed} out of the build context")
    return problems


def readme_problems(stack: Stack, readme: str) -> list[str]:
    """The README's section on the stack names every value the operator must fill in before it starts."""
    if README_SECTION not in readme:
        return [f"README.md has no section {README_SECTION!r}"]
    section = readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    documented = env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))
    required = {r.name for refs in variable_references(stack).values() for r in refs if r.op in (":?", "?")}
    return [
        f"README {README_SECTION}: says nothing of {name}, which .env.example leaves empty and compose requires"
        for name in sorted(required)
        if not documented.get(name) and not re.search(rf"\b{name}\b", section)
    ]
