"""``bench/verify.py`` end to end on the real sandbox and PostgreSQL: both figures come out for the
correct delivery, a failing check stops the bench instead of being measured, and the bench's scratch
database and role are gone afterwards (no timing is asserted: this machine's speed is not the code's)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench import verify as bench_verify
from tests.debian import ensure_debian

pytestmark = pytest.mark.integration
CHECKS = {
    "api-design": {"openapi", "data-parse"},
    "database-engineering": {"sql-apply"},
    "backend-engineering": {"python-syntax", "python-import", "ruff", "bandit", "secrets"},
    "qa-engineering": {"python-syntax", "ruff", "pytest"},
}


@pytest.fixture(scope="module")
def bwrap() -> str:
    return ensure_debian("bwrap", "bubblewrap")


@pytest.fixture
def leftovers(pg_admin_url: str) -> Iterator[None]:
    """After the test: no database and no role of the bench's is left on the server."""
    yield
    name = f"bench_verify_{os.getpid()}"
    with psycopg.connect(pg_admin_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None


async def test_the_benchmark_reports_both_figures_over_passing_checks(
    bwrap: str, pg_admin_url: str, leftovers: None
) -> None:
    options = bench_verify.Options(runs=2, warmup=0, stage_runs=2, stage_warmup=0, database_url=pg_admin_url)
    report = await bench_verify.bench(options)
    json.dumps(report)
    assert set(report["pass"]) == set(report["goals"]) >= {"stage_checks_median_s"}
    stages = report["stage_checks"]
    assert list(stages["teams"]) == bench_verify.PIPELINE
    for slug, checks in CHECKS.items():
        figures = stages["teams"][slug]
        assert figures["n"] == 2 and figures["min_s"] <= figures["median_s"] <= figures["max_s"]
        assert set(figures["checks_median_s"]) == checks, slug
    assert stages["teams"]["qa-engineering"]["earlier_files"] == ["backend/app.py", "backend/NOTES.md"]
    assert stages["all_stages"]["n"] == 8
    assert stages["worst"]["team"] in CHECKS


async def test_a_failing_check_stops_the_bench_and_names_it(
    bwrap: str, pg_admin_url: str, leftovers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "delivery"
    shutil.copytree(bench_verify.DELIVERY, broken)
    (broken / "schema.sql").write_text("CREATE TABLE links (code text PRIMARY KEY,, url);\n")
    monkeypatch.setattr(bench_verify, "DELIVERY", broken)
    options = bench_verify.Options(stage_runs=1, stage_warmup=0, database_url=pg_admin_url)
    with pytest.raises(SystemExit, match=r"database-engineering: checks did not pass.*sql-apply failed"):
        await bench_verify.stage_checks(options)


def test_bad_arguments_say_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--stage-runs", "0"], ["--database-url", "redis://127.0.0.1:6379/0"]):
        with pytest.raises(SystemExit) as exc:
            bench_verify.parse(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--stage-runs must be 1..1000" in err and "--database-url must be a postgresql:// URL" in err
