"""FACTORY_LOCAL_MODEL_THREADS reaches the factory's embedding model, as it does its embedded chat
model (several workers on one machine each take their share of the cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from factory.settings import Settings
from factory.wiring import open_factory

pytestmark = pytest.mark.integration


async def test_local_models_get_the_configured_threads(
    pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "script.json"
    script.write_text("{}")
    monkeypatch.setenv("FACTORY_LOCAL_MODEL_THREADS", "1")
    settings = Settings(
        data_dir=tmp_path / "data", database_url=SecretStr(pg_url), redis_url=SecretStr(redis_base_url),
        redis_prefix=redis_prefix, scripted_model=script,
    )  # fmt: skip
    assert settings.local_model_threads == 1
    async with open_factory(settings) as factory:
        assert factory.router is not None
        assert factory.router.embedder.threads == 1
        assert len((await factory.router.embed(["a sentence"], timeout_s=60))[0]) == 384
