"""The routing layers and their precedence (README "Model routing"), without services."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from factory.errors import ConfigError
from factory.routing_sources import base_layers, env_layer, toml_layer
from factory.settings import Settings
from routing.aliases import combine
from routing.config import KeyRef

README = Path(__file__).parents[3] / "README.md"


def test_the_readme_example_is_valid_routing(tmp_path: Path) -> None:
    [example] = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    path = tmp_path / "factory.toml"
    path.write_text(example)
    layer = toml_layer(path)
    assert layer is not None and layer.cooldown is not None
    assert layer.aliases["factory/architect"][0].key == KeyRef(secret="ANTHROPIC")
    assert [d.model for d in layer.aliases["factory/coder"]] == [
        "hosted_vllm/Qwen2.5-Coder-32B-Instruct", "factory-local/smollm2",
    ]  # fmt: skip


def test_precedence_default_then_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "factory.toml"
    ollama = 'model = "ollama_chat/qwen2.5"\napi_base = "http://h:11434"\n'
    toml.write_text(f'[[routing.aliases."factory/fast"]]\n{ollama}[[routing.aliases."factory/cheap"]]\n{ollama}')
    monkeypatch.setenv("FACTORY_CONFIG", str(toml))
    monkeypatch.setenv(
        "FACTORY_ROUTING", '{"aliases": {"factory/cheap": [{"model": "openai/m", "api_base": "http://e/v1"}]}}'
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-precedence")
    monkeypatch.delenv("FACTORY_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("FACTORY_SCRIPTED_MODEL", raising=False)
    config, sourced, cooldown_source = combine(base_layers(Settings()))
    sources = {s.alias: s.source for s in sourced}
    assert sources == {"factory/architect": "default", "factory/coder": "default", "factory/fast": "factory.toml",
                       "factory/cheap": "environment"}  # fmt: skip
    assert [d.model for d in config.chain("factory/coder")] == ["openai/gpt-4o", "factory-local/smollm2"]
    assert config.chain("factory/coder")[0].key == KeyRef(env="OPENAI_API_KEY") and cooldown_source == "default"


def test_proxy_mode_serves_every_alias_through_the_proxy_with_the_local_tail() -> None:
    from routing.aliases import default_layer

    config, sourced, _ = combine([("default", default_layer())], proxy="http://proxy:4000", proxy_key=None)
    assert {s.source for s in sourced} == {"proxy"}
    assert [d.id for d in config.chain("factory/coder")] == [
        "litellm_proxy/factory/coder@http://proxy:4000", "factory-local/smollm2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{nope", "FACTORY_ROUTING is not JSON"),
        ('{"aliases": {"factory/other": [{"model": "openai/x"}]}}', "unknown alias factory/other"),
        ('{"aliases": {"factory/coder": []}}', "at least 1 item"),
        ('{"aliases": {"factory/coder": [{"model": "openai/x", "api_key": "sk-inline"}]}}', "api_key"),
        ('{"aliases": {"factory/coder": [{"model": "openai/x", "key": {"env": "A", "secret": "B"}}]}}', "exactly one"),
        ('{"aliases": {"factory/coder": [{"model": "openai/x"}]}, "cooldown": {"cooldown_s": -1}}', "cooldown"),
    ],
)
def test_bad_environment_routing_is_a_config_error_saying_where(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        env_layer(text)


def test_an_inline_key_is_refused_in_factory_toml(tmp_path: Path) -> None:
    path = tmp_path / "factory.toml"
    path.write_text('[[routing.aliases."factory/coder"]]\nmodel = "openai/gpt-4o"\napi_key = "sk-inline-secret"\n')
    with pytest.raises(ConfigError) as caught:
        toml_layer(path)
    assert "api_key" in str(caught.value) and "sk-inline-secret" not in str(caught.value)
