"""compose.yaml, .env.example and what they mount, checked without Docker (issue 16, item 5).

The file is read as ``docker compose config`` reads it (interpolated with .env.example's values, the
secrets it leaves empty filled with stand-ins) and checked against the Compose Specification's schema
and for what compose does not check: pinned images, documented variables, no literal secret, host
ports, dependencies and health checks, addresses, volumes, Prometheus and Grafana, and the factory's
own ``Settings`` built from each service's environment. Each check returns its problems; the last
tests break a copy of the stack once per check, to show each one finds what it is for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.compose_checks import (
    DOCKERFILE,
    address_problems,
    dependency_problems,
    env_example_problems,
    image_problems,
    image_unpinned,
    mount_problems,
    port_problems,
    schema_problems,
    secret_problems,
    variable_problems,
)
from tests.compose_files import (
    DOCKERIGNORE,
    README,
    build_problems,
    grafana_problems,
    prometheus_problems,
    readme_problems,
)
from tests.compose_settings import (
    factory_settings_problems,
    first_operator_problems,
    proxy_problems,
    settings_of,
    worker_metrics_problems,
)
from tests.compose_stack import REPO, InterpolationError, Stack, interpolate, references

CHECKS: list[Callable[[Stack], list[str]]] = [
    schema_problems,
    image_problems,
    variable_problems,
    secret_problems,
    port_problems,
    dependency_problems,
    address_problems,
    mount_problems,
    prometheus_problems,
    grafana_problems,
    first_operator_problems,
]
#: Provider keys set, so that the exported proxy config names the variables the proxy must be given.
WITH_KEYS = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-test-anthropic"}


@pytest.fixture(scope="module")
def loaded() -> Stack:
    return Stack.load()


@pytest.fixture
def stack(loaded: Stack) -> Stack:
    return loaded.copy()


@pytest.fixture
def no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings`` read factory.toml from the working directory: the container's has none."""
    monkeypatch.chdir(tmp_path)


# -- the stack as it is -----------------------------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_stack_has_no_problem(stack: Stack, check: Callable[[Stack], list[str]]) -> None:
    assert check(stack) == []


def test_the_expected_services_run_and_the_workers_scale(stack: Stack) -> None:
    long_running = {name for name, spec in stack.services.items() if spec.get("restart") != "no"}
    assert long_running == {
        "postgres", "pgbouncer", "redis", "ollama", "litellm", "app", "worker", "langfuse-web", "langfuse-worker",
        "langfuse-db", "langfuse-redis", "clickhouse", "minio", "prometheus", "grafana",
    }  # fmt: skip
    assert stack.services["worker"]["deploy"]["replicas"] == 2
    assert Stack.load(extra={"FACTORY_WORKERS": "5"}).services["worker"]["deploy"]["replicas"] == 5
    assert stack.services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]


@pytest.mark.usefixtures("no_toml")
@pytest.mark.parametrize("service", ["app", "worker"])
def test_the_factory_settings_point_at_the_services(
    stack: Stack, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert factory_settings_problems(stack, service, monkeypatch) == []
    settings = settings_of(stack.environment(service), monkeypatch)
    assert settings.database_url is not None and settings.redis_url is not None
    database = urlsplit(settings.database_url.get_secret_value())
    assert (database.hostname, database.port, database.path) == ("pgbouncer", 5432, "/factory")
    assert urlsplit(settings.redis_url.get_secret_value()).hostname == "redis"
    assert settings.ollama_api_base == "http://ollama:11434"
    assert settings.litellm_proxy_url == "http://litellm:4000"
    assert settings.langfuse_base_url == "http://langfuse-web:3000"
    assert str(settings.data_dir) == "/data"


@pytest.mark.usefixtures("no_toml")
def test_each_worker_serves_metrics_where_prometheus_looks(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    assert worker_metrics_problems(stack, monkeypatch) == []
    settings = settings_of(stack.environment("worker"), monkeypatch)
    assert (settings.metrics_host, settings.metrics_port, settings.worker_runs) == ("0.0.0.0", 9101, 4)


@pytest.mark.usefixtures("no_toml")
def test_the_proxy_serves_what_init_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_problems(Stack.load(), monkeypatch) == []  # Ollama alone
    assert proxy_problems(Stack.load(extra=WITH_KEYS), monkeypatch) == []  # cloud first, keys passed on


def test_the_image_build_and_the_readme(stack: Stack) -> None:
    dockerfile, dockerignore = DOCKERFILE.read_text(), DOCKERIGNORE.read_text()
    assert build_problems(dockerfile, dockerignore) == []
    assert readme_problems(stack, README.read_text()) == []


def test_the_alert_rules_and_dashboards_are_mounted_where_prometheus_and_grafana_read_them(stack: Stack) -> None:
    assert (REPO / "ops/prometheus/alerts.yml").is_file()
    assert (REPO / "ops/grafana/dashboards/factory.json").is_file()
    assert "/etc/prometheus/alerts.yml" in stack.prometheus["rule_files"]
    assert ("./ops/prometheus/alerts.yml", "/etc/prometheus/alerts.yml", True) in stack.mounts("prometheus")
    assert ("./ops/grafana/dashboards", "/etc/grafana/dashboards", True) in stack.mounts("grafana")


# -- the reader itself ------------------------------------------------------------------------------


def test_interpolation_follows_the_compose_specification() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$SET ${SET} $SET", env) == "$SET v v"
    assert interpolate("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET:-d}", env) == "d  d d"
    assert interpolate("${SET:+alt} ${EMPTY:+alt} ${EMPTY+alt}", env) == "alt  alt"
    assert interpolate("${EMPTY?m}", env) == ""
    with pytest.raises(InterpolationError, match="EMPTY: set it"):
        interpolate("${EMPTY:?set it}", env)
    with pytest.raises(InterpolationError, match="UNSET"):
        interpolate("${UNSET?}", env)
    assert [r.name for r in references("a $$NOT ${A:-x} $B ${C:?m c}")] == ["A", "B", "C"]


def test_every_variable_of_the_env_example_is_explained_once() -> None:
    assert env_example_problems("# a\nA=1\nA2=\n\n# b\nB=2\n") == []
    assert env_example_problems("A=1\n\n# b\nB=2\nB=3\n") == [
        ".env.example: A has no comment saying what it is",
        ".env.example: B is given twice",
    ]


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("redis:7.4.6-alpine", True),
        ("minio/minio:RELEASE.2025-04-22T22-12-26Z", True),
        ("redis@sha256:" + "a" * 64, True),
        ("redis", False),
        ("redis:latest", False),
        ("redis:7", False),
        ("pgvector/pgvector:pg17", False),
    ],
)
def test_an_image_is_pinned_only_by_a_version_or_a_digest(image: str, pinned: bool) -> None:
    assert (image_unpinned(image) is None) is pinned


# -- each check finds what it is for ----------------------------------------------------------------


def _services(stack: Stack) -> dict[str, Any]:
    services: dict[str, Any] = stack.raw["services"]
    return services


def _set(service: str, *path: str | int, value: Any) -> Callable[[Stack], None]:
    def mutate(stack: Stack) -> None:
        node = _services(stack)[service]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _drop(service: str, *path: str | int) -> Callable[[Stack], None]:
    def mutate(stack: Stack) -> None:
        node = _services(stack)[service]
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _scrape_app_at(stack: Stack) -> None:
    stack.prometheus["scrape_configs"][0]["static_configs"][0]["targets"] = ["app:8001"]


def _discover_workers_as(stack: Stack) -> None:
    stack.prometheus["scrape_configs"][1]["dns_sd_configs"][0]["names"] = ["workers"]


def _undeclare_data_volume(stack: Stack) -> None:
    del stack.raw["volumes"]["factory-data"]


BREAKS: list[tuple[str, Callable[[Stack], None], Callable[[Stack], list[str]], str]] = [
    (
        "a key the schema lacks",
        _set("grafana", "healthcheck", "start_interval", value="5s"),
        schema_problems,
        "start_interval",
    ),
    ("a floating tag", _set("redis", "image", value="redis:7"), image_problems, "redis:7"),
    ("no tag at all", _set("postgres", "image", value="pgvector/pgvector"), image_problems, ":latest"),
    (
        "an undocumented variable",
        _set("app", "environment", "FACTORY_NEW", value="${FACTORY_NEW:-1}"),
        variable_problems,
        "FACTORY_NEW",
    ),
    (
        "a secret with a default",
        _set("postgres", "environment", "POSTGRES_PASSWORD", value="${POSTGRES_PASSWORD:-postgres}"),
        variable_problems,
        "POSTGRES_PASSWORD",
    ),
    (
        "a literal password",
        _set("grafana", "environment", "GF_SECURITY_ADMIN_PASSWORD", value="admin"),
        secret_problems,
        "GF_SECURITY_ADMIN_PASSWORD",
    ),
    (
        "a literal password in a URL",
        _set("app", "environment", "FACTORY_REDIS_URL", value="redis://:hunter2@redis:6379/0"),
        secret_problems,
        "literal password",
    ),
    (
        "a literal password option",
        _set("redis", "command", value=["redis-server", "--requirepass", "hunter2"]),
        secret_problems,
        "--requirepass",
    ),
    ("one host port twice", _set("grafana", "ports", value=["127.0.0.1:9090:3000"]), port_problems, "9090"),
    ("replicas on a host port", _set("worker", "ports", value=["9101:9101"]), port_problems, "replicas"),
    (
        "a long-running service without a health check",
        _drop("pgbouncer", "healthcheck"),
        dependency_problems,
        "pgbouncer",
    ),
    (
        "a one-shot waited for as healthy",
        _set("app", "depends_on", "init", value={"condition": "service_healthy"}),
        dependency_problems,
        "service_completed_successfully",
    ),
    (
        "a dependency on no service",
        _set("app", "depends_on", "postgress", value={"condition": "service_healthy"}),
        dependency_problems,
        "postgress",
    ),
    (
        "a service reached but not waited for",
        _drop("init", "depends_on", "redis"),
        dependency_problems,
        "init reaches redis",
    ),
    (
        "a cycle",
        _set("postgres", "depends_on", value={"app": {"condition": "service_healthy"}}),
        dependency_problems,
        "cycle",
    ),
    (
        "a wrong port",
        _set("app", "environment", "LANGFUSE_BASE_URL", value="http://langfuse-web:3030"),
        address_problems,
        "langfuse-web:3030",
    ),
    (
        "a health check on another port",
        _set("redis", "healthcheck", "test", value=["CMD-SHELL", "redis-cli -p 6380 ping"]),
        address_problems,
        "6380",
    ),
    ("an undeclared volume", _undeclare_data_volume, mount_problems, "factory-data"),
    (
        "a repository file that is not there",
        _set("prometheus", "volumes", 1, value="./ops/prometheus/rules.yml:/etc/prometheus/alerts.yml:ro"),
        mount_problems,
        "rules.yml",
    ),
    ("a scrape target no service listens on", _scrape_app_at, prometheus_problems, "app:8001"),
    ("workers not discovered", _discover_workers_as, prometheus_problems, "workers"),
    (
        "the alert rules not mounted",
        _set("prometheus", "volumes", 1, value="prometheus-data:/var/tmp"),
        prometheus_problems,
        "alerts.yml",
    ),
    (
        "Grafana without its provisioning",
        _set("grafana", "volumes", 0, value="grafana-data:/var/tmp"),
        grafana_problems,
        "provisioning",
    ),
    (
        "the operator's password on argv",
        _set(
            "init",
            "command",
            2,
            value='factory users add "$$FIRST_OPERATOR_NAME" --role operator "$$FIRST_OPERATOR_PASSWORD"',
        ),
        first_operator_problems,
        "standard input",
    ),
]


@pytest.mark.parametrize(("fault", "mutate", "check", "said"), BREAKS, ids=[b[0] for b in BREAKS])
def test_each_check_finds_its_fault(
    stack: Stack, fault: str, mutate: Callable[[Stack], None], check: Callable[[Stack], list[str]], said: str
) -> None:
    mutate(stack)
    problems = check(stack)
    assert any(said in p for p in problems), f"{fault}: {problems}"


SETTINGS_BREAKS: list[tuple[str, Callable[[Stack], None], str]] = [
    (
        "the app straight to PostgreSQL",
        _set(
            "app",
            "environment",
            "FACTORY_DATABASE_URL",
            value="postgresql://${POSTGRES_USER:-factory}:${POSTGRES_PASSWORD:?}@postgres:5432/${POSTGRES_DB:-factory}",
        ),
        "not the pgbouncer service",
    ),
    ("pgbouncer in session mode", _set("pgbouncer", "environment", "POOL_MODE", value="session"), "transaction mode"),
    (
        "another Redis password",
        _set("redis", "environment", "REDISCLI_AUTH", value="${LANGFUSE_REDIS_PASSWORD:?}"),
        "Redis URL's password",
    ),
    (
        "another proxy key",
        _set("litellm", "environment", "FACTORY_LITELLM_PROXY_KEY", value="${LANGFUSE_SECRET_KEY:?}"),
        "master key",
    ),
    (
        "Langfuse with other project keys",
        _set("langfuse-web", "environment", "LANGFUSE_INIT_PROJECT_PUBLIC_KEY", value="${LANGFUSE_SECRET_KEY:?}"),
        "LANGFUSE_PUBLIC_KEY",
    ),
    ("the data dir in the container only", _set("app", "volumes", value=[]), "named volume"),
]


@pytest.mark.usefixtures("no_toml")
@pytest.mark.parametrize(("fault", "mutate", "said"), SETTINGS_BREAKS, ids=[b[0] for b in SETTINGS_BREAKS])
def test_the_settings_check_finds_its_fault(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, fault: str, mutate: Callable[[Stack], None], said: str
) -> None:
    mutate(stack)
    problems = factory_settings_problems(stack, "app", monkeypatch)
    assert any(said in p for p in problems), f"{fault}: {problems}"


@pytest.mark.usefixtures("no_toml")
def test_the_worker_and_proxy_checks_find_their_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack.load()
    _set("worker", "environment", "FACTORY_METRICS_HOST", value="127.0.0.1")(stack)
    assert any("cannot be scraped" in p for p in worker_metrics_problems(stack, monkeypatch))

    stack = Stack.load()
    _set("init", "environment", "FACTORY_LITELLM_PROXY_URL", value="http://litellm:4000")(stack)
    assert any("call itself" in p for p in proxy_problems(stack, monkeypatch))

    stack = Stack.load(extra=WITH_KEYS)
    _drop("litellm", "environment", "OPENAI_API_KEY")(stack)
    assert any("OPENAI_API_KEY" in p for p in proxy_problems(stack, monkeypatch))

    stack = Stack.load()
    _set("litellm", "command", value=["litellm", "--config", "/etc/litellm/other.yaml", "--port", "4000"])(stack)
    assert any("--config" in p for p in proxy_problems(stack, monkeypatch))


def test_the_build_and_readme_checks_find_their_faults(stack: Stack) -> None:
    dockerfile, dockerignore = DOCKERFILE.read_text(), DOCKERIGNORE.read_text()
    assert any("--no-deps" in p for p in build_problems(dockerfile.replace("--no-deps -e .", "-e ."), dockerignore))
    assert any(".env " in p for p in build_problems(dockerfile, dockerignore.replace(".env\n", "")))
    readme = README.read_text()
    assert readme_problems(stack, readme.replace("## Full stack (compose)", "## Compose")) != []
    assert any(
        "GRAFANA_ADMIN_PASSWORD" in p for p in readme_problems(stack, readme.replace("GRAFANA_ADMIN_PASSWORD", "X"))
    )
