"""Fixtures for `factory` subprocesses on the real services with the scripted model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pgbouncer import pgbouncer  # noqa: F401  (a fixture for the tests here)


@pytest.fixture
def env(cli_env: dict[str, str], pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    """A `factory` environment on the test's database and Redis prefix, with an empty model script."""
    script = tmp_path / "script.json"
    script.write_text("{}")
    return {
        **cli_env,
        "FACTORY_DATABASE_URL": pg_url,
        "FACTORY_REDIS_URL": redis_base_url,
        "FACTORY_REDIS_PREFIX": redis_prefix,
        "FACTORY_SCRIPTED_MODEL": str(script),
    }


def write_script(env: dict[str, str], script: dict[str, Any]) -> None:
    """What the scripted model answers in the next `factory` process (each reads it afresh)."""
    Path(env["FACTORY_SCRIPTED_MODEL"]).write_text(json.dumps(script))
