"""The alert rules and the Grafana dashboard under ``ops/``, checked by the real ``promtool``
(Debian's ``prometheus`` package, installed here when missing and this runs as root; otherwise the
test fails saying which package to install), and against the metrics ``observability.metrics``
actually exposes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from observability.base import Event, ModelCall
from observability.metrics import Metrics, Snapshot
from tests.conftest import REPO

pytestmark = pytest.mark.integration

ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "ops" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "factory.json"
#: The alerts the factory promises (issue 16): SLA breached, runs failing, no worker alive, broker backlog.
ALERT_NAMES = {
    "FactoryEscalationPastSla",
    "FactoryEscalationPastSlaLowPriority",
    "FactoryRunsFailing",
    "FactoryNoWorkerAlive",
    "FactoryBrokerBacklog",
}
_METRIC = re.compile(r"\b(?:factory|process|python)_[a-zA-Z0-9_]+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        wait = ["-o", "DPkg::Lock::Timeout=300"]  # another installation may hold the lock for a while
        for step in (
            ["apt-get", *wait, "update", "-qq"],
            ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        ):
            subprocess.run(step, env=env, check=False, capture_output=True, timeout=900)
        found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed and could not be: install the Debian package `prometheus`")
    return found


def run(promtool: str, *args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_alert_rules_pass_promtool_check(promtool: str) -> None:
    checked = run(promtool, "check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in checked.stdout, checked.stdout
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:  # each waits before it fires, says how bad it is, and what it means
        assert rule.get("for") and rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_each_alert_fires_on_the_right_series_in_promtools_unit_tests(promtool: str) -> None:
    tested = run(promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout, tested.stdout
    covered = {
        t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert covered == ALERT_NAMES  # every rule has a test that makes it fire (or not)


def test_promtool_refuses_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: a rule with a bad expression is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(by (factory_runs)\n")
    assert run(promtool, "check", "rules", broken).returncode != 0


def dashboard_queries() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        found = []
        for panel in panels:
            found += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
            found += walk(panel.get("panels", []))
        return found

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def test_the_dashboard_queries_are_promql_promtool_accepts(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    # Grafana's own variables stand for a range; as recording rules promtool parses every query.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$__rate_interval", "1m").replace("$__range", "1h")}
        for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run(promtool, "check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_uses_a_prometheus_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert all(p["datasource"] == {"type": "prometheus", "uid": f"${{{variable['name']}}}"} for p in panels)


def exposed() -> tuple[set[str], set[str]]:
    """Every sample name and every ``factory_`` family a Metrics registry exposes once it saw one of
    everything it counts."""
    m = Metrics(teams=["qa-engineering"])
    at = datetime(2026, 12, 1, tzinfo=UTC)
    events: list[tuple[str, dict[str, Any]]] = [
        ("stage.started", {"stage": 0, "team": "qa-engineering"}),
        ("stage.completed", {"stage": 0, "team": "qa-engineering"}),
        ("run.completed", {}),
        ("escalation.opened", {"stage": 1, "kind": "blocked", "priority": "high", "team": "qa-engineering"}),
        ("escalation.decided", {"decision": "answered"}),
        ("escalation.sla", {"level": 2, "priority": "high"}),
        ("clarification.requested", {}),
        ("clarification.answered", {}),
        ("clarification.refused", {"reason": "timeout"}),
    ]

    async def feed() -> None:
        for i, (kind, data) in enumerate(events):
            await m.emit(Event(type=kind, run_id="r", data=data, at=at + timedelta(seconds=i)))

    asyncio.run(feed())
    m.model_call(
        ModelCall(
            run_id="r",
            team="qa-engineering",
            alias="factory/coder",
            model="m",
            purpose="stage",
            tokens_in=1,
            tokens_out=1,
            cost_usd=0.1,
            latency_ms=10,
            ok=True,
            fallbacks=["x"],
            ended_at=at,
        )  # fmt: skip
    )
    m.apply(Snapshot({"complete": 1}, {"high": 1}, {"high": 1}, 1, {"qa-engineering": 1}))
    families = list(text_string_to_metric_families(m.exposition()[0].decode()))
    samples = {s.name for f in families for s in f.samples}
    # The text format's ``_created`` timestamps come out as families of their own: not ours to chart.
    return samples, {f.name for f in families if f.name.startswith("factory_") and not f.name.endswith("_created")}


def names_in(query: str) -> set[str]:
    return set(_METRIC.findall(_STRING.sub('""', query)))


def test_the_dashboard_and_the_alerts_name_only_exposed_metrics_and_show_every_family() -> None:
    samples, families = exposed()
    queries = dashboard_queries()
    used = set().union(*map(names_in, queries))
    assert used, "no metric found in the dashboard's queries"
    assert used <= samples, f"the dashboard queries metrics nobody exposes: {sorted(used - samples)}"
    alert_exprs = [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    in_alerts = set().union(*map(names_in, alert_exprs))
    assert in_alerts <= samples, f"the alerts query metrics nobody exposes: {sorted(in_alerts - samples)}"
    suffixes = ("", "_total", "_bucket", "_sum", "_count", "_info")
    missing = {f for f in families if not any(f + s in used for s in suffixes)}
    assert not missing, f"metric families without a dashboard panel: {sorted(missing)}"
    assert names_in('factory_runs{status="factory_fake"} + on() factory_x') == {"factory_runs", "factory_x"}
