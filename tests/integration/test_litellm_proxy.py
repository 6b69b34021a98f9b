"""Proxy mode (issue 14, item 6): the exported config served by the real LiteLLM proxy.

The routing is set through ``FACTORY_ROUTING``, exported with the real CLI, and served by the real
``litellm`` proxy from its own virtual environment (tests/proxy_env.py installs it from
requirements-proxy.lock: ``litellm[proxy]`` cannot share the app's environment). Upstream are fake
providers on loopback: one answering 500, one 429, one answering. The proxy is driven twice: over
its OpenAI-compatible HTTP API with the master key, then by the factory itself in proxy mode
(``FACTORY_LITELLM_PROXY_URL``): ``routing test`` and a pipeline stage go through it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from factory.errors import ConfigError
from routing.base import CHAT_ALIASES
from routing.config import Cooldown, Deployment, KeyRef, RoutingConfig
from routing.proxy_config import PROXY_KEY_ENV, litellm_config
from tests.fakeprovider import FakeProvider, fake_providers  # noqa: F401  (a fixture for the tests here)
from tests.integration.cli import factory, run_json
from tests.proxy_env import litellm_bin

pytestmark = pytest.mark.integration

MASTER_KEY = "sk-proxy-master-7c1d2e"  # the proxy's key; the factory gives it as FACTORY_LITELLM_PROXY_KEY
UPSTREAM_KEY = "sk-upstream-fake-93ab40"  # the fake providers' key, only ever referenced by name
UPSTREAM_KEY_ENV = "FAKE_UPSTREAM_KEY"
PRICE_IN, PRICE_OUT = 3.0, 15.0  # USD per million tokens
PROXY_START_S = 120.0  # bounded wait for the proxy's health endpoint (about 12 s here)
CHAT = "/v1/chat/completions"


def _deployment(provider: FakeProvider) -> dict[str, Any]:
    return {
        "model": "openai/test-model",
        "api_base": provider.url,
        "key": {"env": UPSTREAM_KEY_ENV},
        "timeout_s": 20,
        "price_in_per_m": PRICE_IN,
        "price_out_per_m": PRICE_OUT,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.is_file() else "(no log)"


@pytest.fixture
def serve_proxy(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """``serve_proxy(config_file)`` starts the real ``litellm`` proxy on a free loopback port from
    its own environment and returns its URL once healthy; every proxy started is stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    binary = litellm_bin()  # installs the proxy's environment from its lock when missing or stale

    def serve(config: Path) -> str:
        port = _free_port()
        log = tmp_path / f"proxy-{port}.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            PROXY_KEY_ENV: MASTER_KEY,
            UPSTREAM_KEY_ENV: UPSTREAM_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network: the price map LiteLLM ships
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + PROXY_START_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the LiteLLM proxy exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                if httpx.get(f"{url}/health/liveliness", timeout=2.0).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(
            f"the LiteLLM proxy did not answer {url}/health/liveliness in {PROXY_START_S:g}s:\n{_log_tail(log)}"
        )

    yield serve
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the proxy and any worker it forked
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_exported_config_is_served_by_the_real_proxy(
    env: dict[str, str],
    pg_url: str,
    tmp_path: Path,
    fake_providers: Callable[..., list[FakeProvider]],  # noqa: F811
    serve_proxy: Callable[[Path], str],
) -> None:
    failing, limited, good = fake_providers(3)
    failing.default, limited.default = "error_500", "rate_limit"
    routing: dict[str, Any] = {
        "aliases": {
            "factory/coder": [_deployment(failing), _deployment(good), {"model": "factory-local/scripted"}],
            "factory/fast": [_deployment(limited), _deployment(good)],
            "factory/architect": [_deployment(good)],
            "factory/cheap": [_deployment(good)],
        },
        "cooldown": {"allowed_fails": 0, "cooldown_s": 600},
    }
    env = {**env, "FACTORY_ROUTING": json.dumps(routing), "FACTORY_BUDGET_TEAM_USD": "0.5"}
    env[UPSTREAM_KEY_ENV] = UPSTREAM_KEY  # set in the exporting process too: the file must still only name it

    # -- export with the real CLI ----------------------------------------------------------------
    config_file = tmp_path / "litellm.yaml"
    exported = factory("routing", "export-litellm-config", "--out", str(config_file), env=env, timeout=120)
    assert exported.returncode == 0, exported.stderr
    text = config_file.read_text()
    assert UPSTREAM_KEY not in text and MASTER_KEY not in text
    config = yaml.safe_load(text)
    groups = {m["model_name"]: m for m in config["model_list"]}
    assert list(groups) == [
        "factory/architect",
        "factory/coder",
        "factory/coder~1",
        "factory/fast",
        "factory/fast~1",
        "factory/cheap",
    ]  # fmt: skip  (the in-process scripted model is not among them)
    assert groups["factory/coder"]["litellm_params"] == {
        "model": "openai/test-model", "api_base": failing.url, "api_key": f"os.environ/{UPSTREAM_KEY_ENV}",
        "timeout": 20.0, "input_cost_per_token": PRICE_IN / 1e6, "output_cost_per_token": PRICE_OUT / 1e6,
    }  # fmt: skip
    router = config["router_settings"]
    assert router["fallbacks"] == [{"factory/coder": ["factory/coder~1"]}, {"factory/fast": ["factory/fast~1"]}]
    assert (router["num_retries"], router["allowed_fails"], router["cooldown_time"]) == (0, 0, 600)
    assert config["general_settings"]["master_key"] == f"os.environ/{PROXY_KEY_ENV}"
    assert config["factory"]["left_out_in_process"] == {"factory/coder": ["factory-local/scripted"]}
    assert config["factory"]["budgets_enforced_by_factory"] == {"team_usd_per_run": 0.5}

    proxy = serve_proxy(config_file)

    # -- (a) the proxy's own API, with the master key ----------------------------------------------
    def ask(alias: str, key: str = MASTER_KEY) -> httpx.Response:
        body = {"model": alias, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
        return httpx.post(f"{proxy}{CHAT}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    refused = ask("factory/coder", key="sk-not-the-master-key")  # without its database only the master key exists
    assert refused.status_code in (400, 401, 403) and good.count(CHAT) == failing.count(CHAT) == 0
    first = ask("factory/coder")
    assert first.status_code == 200, first.text
    assert first.headers["x-litellm-model-id"] == "factory/coder~1"  # the 500 fell back to the next deployment
    assert first.headers["x-litellm-attempted-fallbacks"] == "1"
    assert first.json()["choices"][0]["message"]["content"].startswith("Fake answer from test-model")
    usage = first.json()["usage"]
    expected = (usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT) / 1e6
    assert float(first.headers["x-litellm-response-cost"]) == pytest.approx(expected)  # the configured prices
    assert (failing.count(CHAT), good.count(CHAT)) == (1, 1)
    answered = [s for s in good.requests if s.path == CHAT][-1]
    assert answered.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # os.environ/NAME resolved by the proxy
    assert answered.body["max_tokens"] == 16

    second = ask("factory/coder")  # the failing deployment cools down: allowed_fails 0 on a one-deployment group
    assert second.status_code == 200 and second.headers["x-litellm-model-id"] == "factory/coder~1"
    assert (failing.count(CHAT), good.count(CHAT)) == (1, 2)

    fast = ask("factory/fast")  # a 429 falls back too
    assert fast.status_code == 200 and fast.headers["x-litellm-model-id"] == "factory/fast~1"
    assert (limited.count(CHAT), good.count(CHAT)) == (1, 3)

    # -- (b) the factory in proxy mode ------------------------------------------------------------
    proxied = {**env, "FACTORY_LITELLM_PROXY_URL": proxy, PROXY_KEY_ENV: MASTER_KEY}
    tested = factory("routing", "test", "--json", env=proxied, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    results = {r["alias"]: r for r in json.loads(tested.stdout) if r["deployment"].startswith("litellm_proxy/")}
    assert sorted(results) == sorted(routing["aliases"])  # every alias is one deployment: itself, on the proxy
    for alias, result in results.items():
        assert result["deployment"] == f"litellm_proxy/{alias}@{proxy}"
        assert result["ok"] and result["structured"], result
        assert result["cost_usd"] > 0  # the proxy's cost for the call, read back by the factory's LiteLLM
    assert failing.count(CHAT) == 1  # still cooling down in the proxy: the factory's calls never reached it
    asked = [s.body for s in good.requests if s.path == CHAT][-4:]
    assert all(b["response_format"]["type"] == "json_schema" for b in asked)  # structured output passed through

    run = factory("run", "A tiny notes app", "--pipeline", "business-analysis", "--json", env=proxied, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run_json(run)
    assert out["status"] == "complete", out
    for stage in out["stages"]:  # "ALIAS -> the deployment that answered": the alias, on the proxy
        alias, _, model = stage["model"].partition(" -> ")
        assert model == f"litellm_proxy/{alias}", stage
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT model, ok, cost_usd FROM usage_ledger WHERE run_id = %s", (out["run_id"],)
        ).fetchall()
    assert rows and all(ok and model.startswith("litellm_proxy/factory/") and cost > 0 for model, ok, cost in rows)
    assert failing.count(CHAT) == 1


def _config(*chains: list[Deployment], proxy: str | None = None) -> RoutingConfig:
    return RoutingConfig.model_validate(
        {"aliases": dict(zip(CHAT_ALIASES, chains, strict=True)), "cooldown": Cooldown(allowed_fails=2, cooldown_s=30),
         "proxy": proxy}
    )  # fmt: skip


def test_export_refuses_what_a_proxy_cannot_serve() -> None:
    local = [Deployment(model="factory-local/smollm2")]
    with pytest.raises(ConfigError, match="no alias has a deployment a LiteLLM proxy can serve"):
        litellm_config(_config(local, local, local, local))
    remote = [Deployment(model="openai/gpt-4o", key=KeyRef(env="OPENAI_API_KEY"))]
    with pytest.raises(ConfigError, match="unset FACTORY_LITELLM_PROXY_URL"):
        litellm_config(_config(remote, remote, remote, remote, proxy="http://proxy:4000"))


def test_stored_secrets_and_cooldowns_in_the_export() -> None:
    stored = Deployment(model="anthropic/claude-haiku-4-5", key=KeyRef(secret="anthropic.prod-key"))
    embedded = Deployment(model="factory-local/smollm2")
    config = litellm_config(_config([stored, embedded], [stored], [stored], [embedded]))
    assert [m["model_name"] for m in config["model_list"]] == ["factory/architect", "factory/coder", "factory/fast"]
    assert config["model_list"][0]["litellm_params"]["api_key"] == "os.environ/FACTORY_SECRET_ANTHROPIC_PROD_KEY"
    assert config["factory"]["aliases_not_served"] == ["factory/cheap"]
    assert any("FACTORY_SECRET_ANTHROPIC_PROD_KEY" in note for note in config["factory"]["notes"])
    router = config["router_settings"]
    assert router["fallbacks"] == [] and router["allowed_fails"] == 2 and router["cooldown_time"] == 30
    assert set(router["allowed_fails_policy"].values()) == {2}
    assert "budgets_enforced_by_factory" not in config["factory"]


def test_two_stored_secrets_that_would_share_one_variable_are_refused() -> None:
    dotted = Deployment(model="anthropic/claude-haiku-4-5", key=KeyRef(secret="anthropic.prod"))
    dashed = Deployment(model="anthropic/claude-sonnet-4-5", key=KeyRef(secret="anthropic-prod"))
    with pytest.raises(ConfigError, match="would both be exported as FACTORY_SECRET_ANTHROPIC_PROD"):
        litellm_config(_config([dotted], [dashed], [dotted], [dotted]))
