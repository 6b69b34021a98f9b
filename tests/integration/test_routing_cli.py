"""Issue 14 items 1, 2 and 5 through the real `factory` CLI on real PostgreSQL, Redis and LiteLLM:
routing set/show/reset/history/test round trip, validation, a run recording and keeping the routing
it started with, and a per-team USD budget that escalates."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from routing.base import CHAT_ALIASES
from tests.fakeprovider import FakeProvider
from tests.integration.cli import factory, run_json

pytestmark = pytest.mark.integration
REQ = "A tiny notes app: write, list and delete notes."


def _ok(proc: Any) -> str:
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout)


def _show(env: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_ok(factory("routing", "show", "--json", env=env)))
    return data


def _chain(view: dict[str, Any], alias: str) -> tuple[str, list[str]]:
    entry = next(a for a in view["aliases"] if a["alias"] == alias)
    return entry["source"], [d["model"] + (f"@{d['api_base']}" if "api_base" in d else "") for d in entry["chain"]]


def test_set_show_history_reset_round_trip(env: dict[str, str], fake_provider: FakeProvider) -> None:
    env = {**env, "FACTORY_TEST_CODER_KEY": "sk-test-round-trip-key"}
    assert _chain(_show(env), "factory/coder") == ("default", ["factory-local/scripted"])
    out = _ok(
        factory(
            "routing",
            "set",
            "coder",
            "hosted_vllm/qwen-coder,factory-local/scripted",
            "--api-base",
            fake_provider.url,
            "--key-env",
            "FACTORY_TEST_CODER_KEY",
            "--price-in",
            "0.5",
            "--price-out",
            "1.5",
            "--timeout",
            "20",
            "--by",
            "alice",
            env=env,
        )  # fmt: skip
    )
    assert "factory/coder" in out and "by alice" in out and "store version 1" in out
    view = _show(env)
    source, chain = _chain(view, "factory/coder")
    assert source.startswith("store v1 by alice") and chain == [
        f"hosted_vllm/qwen-coder@{fake_provider.url}",
        "factory-local/scripted",
    ]
    first = next(a for a in view["aliases"] if a["alias"] == "factory/coder")["chain"][0]
    assert first["key"] == {"env": "FACTORY_TEST_CODER_KEY", "present": True}  # whether it is set, never the key
    assert (first["price_in_per_m"], first["price_out_per_m"], first["timeout_s"]) == (0.5, 1.5, 20.0)
    assert "sk-test-round-trip-key" not in json.dumps(view)
    assert _chain(view, "factory/fast") == ("default", ["factory-local/scripted"])  # other aliases untouched
    text = _ok(factory("routing", "show", env=env))
    assert "key env:FACTORY_TEST_CODER_KEY (set)" in text and "sk-test" not in text

    _ok(factory("routing", "cooldown", "--allowed-fails", "2", "--cooldown-s", "15", "--by", "bob", env=env))
    assert _show(env)["cooldown"]["allowed_fails"] == 2 and _show(env)["cooldown"]["source"].startswith(
        "store v2 by bob"
    )

    tested = json.loads(factory("routing", "test", "coder", "--json", env=env).stdout)
    assert [(t["deployment"], t["ok"]) for t in tested] == [
        (f"hosted_vllm/qwen-coder@{fake_provider.url}", True), ("factory-local/scripted", True),
    ]  # fmt: skip
    assert fake_provider.requests[-1].headers["authorization"] == "Bearer sk-test-round-trip-key"

    assert "reset factory/coder" in _ok(factory("routing", "reset", "coder", "--by", "carol", env=env))
    assert _chain(_show(env), "factory/coder") == ("default", ["factory-local/scripted"])
    history = json.loads(_ok(factory("routing", "history", "--json", env=env)))
    assert [(h["version"], h["target"], h["changed_by"], "chain" in h) for h in history] == [
        (3, "factory/coder", "carol", False), (2, "cooldown", "bob", False), (1, "factory/coder", "alice", True),
    ]  # fmt: skip
    assert "reset cooldown" in _ok(factory("routing", "reset", env=env))


def test_routing_changes_are_history_the_database_refuses_edits(env: dict[str, str], pg_url: str) -> None:
    _ok(factory("routing", "set", "fast", "ollama_chat/qwen2.5", "--api-base", "http://127.0.0.1:9", env=env))
    with psycopg.connect(pg_url) as conn, pytest.raises(psycopg.DatabaseError, match="history"):
        conn.execute("UPDATE routing_changes SET changed_by = 'mallory'")


INVALID = [
    (["nope", "openai/gpt-4o"], "unknown alias 'nope'"),
    (["coder", "foo/bar"], "unknown provider 'foo'"),
    (["coder", "gpt-4o"], "is not provider/model"),
    (["coder", "openai/x", "--api-base", "ftp://host"], "must be an http(s) URL"),
    (["coder", "openai/x", "--api-base", "http://u:p@host"], "must hold no credentials"),
    (["coder", "hosted_vllm/qwen"], "needs --api-base"),
    (
        ["coder", "openai/x", "--key-env", "FACTORY_TEST_NOT_SET_ANYWHERE"],
        "key env:FACTORY_TEST_NOT_SET_ANYWHERE is not set",
    ),
    (["coder", "openai/x", "--key-secret", "NO_SUCH_SECRET"], "key secret:NO_SUCH_SECRET is not set"),
    (["coder", "openai/x", "--key-env", "bad name"], "must be an environment variable name"),
    (
        [
            "coder",
            "openai/x,openai/y",
            "--api-base",
            "http://a",
            "--api-base",
            "http://b",
            "--api-base",
            "http://c",
        ],
        "--api-base was given 3 times for 2 models",
    ),
    (
        ["coder", "openai/x,factory-local/smollm2", "--api-base", "http://a", "--api-base", "http://b"],
        "runs in this process",
    ),
    (["coder", "openai/x", "--structured", "grammar"], "structured = grammar is the embedded model's"),
    (["coder", "openai/x", "--timeout", "-1"], "timeout_s"),
    (["coder", ","], "give at least one model"),
]


def test_invalid_changes_exit_2_with_what_to_write_and_record_nothing(env: dict[str, str]) -> None:
    for args, says in INVALID:
        proc = factory("routing", "set", *args, env=env)
        assert proc.returncode == 2, (args, proc.stdout + proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("factory: ") and says in line, (args, line)
        assert "AbCdEfGh1234567890" not in line  # a key given where its name belongs is never printed
    assert _show(env)["version"] == 0


def test_a_bad_factory_toml_or_env_routing_is_a_clear_error(env: dict[str, str], tmp_path: Any) -> None:
    bad = factory("routing", "show", env={**env, "FACTORY_ROUTING": "{not json"})
    assert bad.returncode == 2 and "FACTORY_ROUTING is not JSON" in bad.stderr
    toml = tmp_path / "factory.toml"
    toml.write_text('[routing.aliases]\n"factory/coder" = [{model = "nope/x"}]\n')
    bad = factory("routing", "show", env={**env, "FACTORY_CONFIG": str(toml)})
    assert bad.returncode == 2 and "unknown provider 'nope'" in bad.stderr and str(toml) in bad.stderr
    toml.write_text(
        '[routing.aliases]\n"factory/fast" = [{model = "ollama_chat/qwen2.5", api_base = "http://127.0.0.1:9"}]\n'
    )
    env_layer = json.dumps({"aliases": {"factory/cheap": [{"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}]}})
    view = _show({**env, "FACTORY_CONFIG": str(toml), "FACTORY_ROUTING": env_layer})
    assert _chain(view, "factory/fast") == ("factory.toml", ["ollama_chat/qwen2.5@http://127.0.0.1:9"])
    assert _chain(view, "factory/cheap") == ("environment", ["openai/m@http://127.0.0.1:9/v1"])


def test_a_run_records_its_routing_keeps_it_and_a_team_usd_budget_escalates(
    env: dict[str, str], fake_providers: Any, pg_url: str
) -> None:
    first, second = fake_providers(2)
    for alias in CHAT_ALIASES:  # priced so that one call spends the team's budget
        _ok(factory("routing", "set", alias, "openai/test-model", "--api-base", first.url,
                    "--price-in", "1000", "--price-out", "1000", env=env))  # fmt: skip
    # An answer the team cannot use makes it try again: its second call is over its budget.
    first.push("off_schema")
    run_env = {**env, "FACTORY_BUDGET_TEAM_USD": "0.1"}  # the unusable answer costs $0.11
    proc = factory("run", "--pipeline", "business-analysis", "--json", REQ, env=run_env)
    assert proc.returncode == 3, proc.stderr
    outcome = run_json(proc)
    [escalation] = outcome["escalations"]
    assert escalation["kind"] == "budget" and escalation["team"] == "business-analysis"
    assert "budget" in escalation["question"] and "$" in escalation["question"]
    calls_before = first.count("/v1/chat/completions")
    assert calls_before >= 1

    with psycopg.connect(pg_url) as conn:
        [(payload,)] = conn.execute(
            "SELECT payload FROM audit_entries WHERE run_id = %s AND kind = 'run.created'", (outcome["run_id"],)
        ).fetchall()
        [(cost,)] = conn.execute(
            "SELECT sum(cost_usd) FROM usage_ledger WHERE run_id = %s", (outcome["run_id"],)
        ).fetchall()
    recorded = json.loads(payload)["routing"]["aliases"]["factory/coder"]
    assert recorded == [
        {"model": "openai/test-model", "api_base": first.url, "price_in_per_m": 1000.0, "price_out_per_m": 1000.0}
    ]
    assert cost == pytest.approx(0.11)

    # The routing changes; the run, approved one more budget, carries on with the routing it started with.
    for alias in CHAT_ALIASES:
        _ok(factory("routing", "set", alias, "openai/test-model", "--api-base", second.url, env=env))
    proc = factory("hitl", "approve", escalation["id"], "--resume", env=run_env)
    assert proc.returncode == 0, proc.stderr  # one more budget: the retry is made, and the stage completes
    assert first.count("/v1/chat/completions") > calls_before and second.count() == 0
    # A new run starts with the new routing.
    fresh = factory("run", "--pipeline", "business-analysis", "--json", REQ, env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert second.count("/v1/chat/completions") >= 1


def test_a_fallback_is_visible_in_the_ledger_the_audit_the_live_events_and_routing_show(
    env: dict[str, str], fake_providers: Any, pg_url: str, redis_base_url: str, redis_prefix: str
) -> None:
    import redis

    down, up = fake_providers(2)
    down.default = "error_500"
    for alias in CHAT_ALIASES:
        _ok(factory("routing", "set", alias, "openai/test-model,openai/test-model",
                    "--api-base", down.url, "--api-base", up.url, env=env))  # fmt: skip
    proc = factory("run", "--pipeline", "business-analysis", "--json", REQ, env=env)
    assert proc.returncode == 0, proc.stderr
    run_id = run_json(proc)["run_id"]
    failed = f"openai/test-model@{down.url}"
    assert down.count("/v1/chat/completions") == 1  # then it cooled: later calls skipped it

    with psycopg.connect(pg_url) as conn:
        hops = conn.execute("SELECT fallbacks FROM usage_ledger WHERE run_id = %s ORDER BY id", (run_id,)).fetchall()
        executions = conn.execute(
            "SELECT payload FROM audit_entries WHERE run_id = %s AND kind = 'stage.execution'", (run_id,)
        ).fetchall()
    assert [f["kind"] for f in hops[0][0]] == ["server_error"] and hops[0][0][0]["deployment"] == failed
    assert all(f["kind"] == "cooling" for row in hops[1:] for f in row[0])
    calls = json.loads(executions[0][0])["calls"]
    assert calls[0]["fallbacks"][0]["deployment"] == failed and calls[0]["model"] == "openai/test-model"

    client = redis.Redis.from_url(redis_base_url)
    events = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _id, fields in client.xrange(f"{redis_prefix}events:{run_id}")
    ]
    fallback_events = [e for e in events if e.get("type") == "model.fallback"]
    assert fallback_events and failed in json.dumps(fallback_events)

    cooling = _show(env)["cooling"]
    assert [c["deployment"] for c in cooling] == [failed] and "server_error" in cooling[0]["reason"]
    usage = json.loads(_ok(factory("usage", "--run", run_id, "--json", env=env)))
    assert usage["total"]["fallback_calls"] == len(hops) and usage["total"]["fallback_hops"] >= len(hops)


@pytest.mark.slow
def test_cloud_failing_falls_back_to_the_embedded_model_without_killing_the_process(
    env: dict[str, str], fake_provider: FakeProvider
) -> None:
    """Issue 14 item 7, exactly as reported: OPENAI_API_KEY set, OPENAI_API_BASE answering 500; the
    run fell back to the embedded model and died with SIGSEGV (exit 139)."""
    fake_provider.default = "error_500"
    cloud = {k: v for k, v in env.items() if k != "FACTORY_SCRIPTED_MODEL"}
    cloud |= {"OPENAI_API_KEY": "sk-test-cloud-that-fails", "OPENAI_API_BASE": fake_provider.url}
    proc = factory("run", "--pipeline", "business-analysis", "--json", "A tiny notes app", env=cloud, timeout=900)
    assert proc.returncode in (0, 3), f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    outcome = run_json(proc)
    assert outcome["stages"][0]["model"].endswith("factory-local/smollm2")
    assert fake_provider.count("/v1/chat/completions") >= 1  # the cloud was tried first


def test_ollama_models_and_doctor_say_which_configured_model_to_pull(
    env: dict[str, str], fake_provider: FakeProvider
) -> None:
    _ok(factory("routing", "set", "fast", "ollama_chat/qwen2.5:0.5b", "--api-base", fake_provider.ollama_url, env=env))
    _ok(factory("routing", "set", "cheap", "ollama_chat/llama3.1", "--api-base", fake_provider.ollama_url, env=env))
    models = factory("routing", "models", env=env)
    assert models.returncode == 1  # a configured model is missing
    assert "qwen2.5:0.5b" in models.stdout and "MISSING llama3.1" in models.stdout
    assert "`ollama pull llama3.1`" in models.stdout
    listed = json.loads(factory("routing", "models", "--json", env=env).stdout)
    assert [(s["base"], s["missing"]) for s in listed] == [(fake_provider.ollama_url, ["llama3.1"])]
    doctor = json.loads(factory("doctor", "--json", env=env).stdout)
    routing = next(c for c in doctor["checks"] if c["name"] == "routing")
    assert any("ollama pull llama3.1" in w for w in routing["warnings"]) and routing["sources"][
        "factory/cheap"
    ].startswith("store v2")
    fake_provider.stop()  # down: said, with how to start it
    doctor = json.loads(factory("doctor", "--json", env=env).stdout)
    routing = next(c for c in doctor["checks"] if c["name"] == "routing")
    assert any("unreachable" in w and "ollama serve" in w for w in routing["warnings"])


def test_settings_with_credentials_in_a_url_are_refused_without_printing_them(env: dict[str, str]) -> None:
    for name in ("OLLAMA_API_BASE", "FACTORY_LITELLM_PROXY_URL"):
        proc = factory("routing", "show", env={**env, name: "http://bob:t0kenS3cretValue@ollama.lan:11434"})
        assert proc.returncode == 2 and name in proc.stderr and "credentials" in proc.stderr, proc.stderr
        assert "t0kenS3cretValue" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_a_stored_change_that_no_longer_validates_is_skipped_said_and_reset(env: dict[str, str], pg_url: str) -> None:
    _ok(factory("routing", "set", "coder", "ollama_chat/qwen2.5", "--api-base", "http://127.0.0.1:9", env=env))
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as if LiteLLM had dropped a provider since
        conn.execute(
            "INSERT INTO routing_changes (target, value, changed_by) VALUES"
            " ('factory/coder', '[{\"model\": \"gone-provider/m\"}]', 'old-version')"
        )
    view = _show(env)
    assert _chain(view, "factory/coder") == ("default", ["factory-local/scripted"])  # the lower sources serve it
    assert any(
        "store v2 (factory/coder) no longer validates" in p and "unknown provider" in p for p in view["problems"]
    )
    assert "WARNING store v2" in _ok(factory("routing", "show", env=env))
    assert "reset factory/coder" in _ok(factory("routing", "reset", "coder", env=env))
    assert _show(env)["problems"] == []
