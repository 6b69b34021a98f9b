"""The run summary says plainly when a run's models were all the embedded 135M model: its artifacts
are for trying the factory, not for use (text only; the JSON stays as it was)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import typer

from factory.cli_common import embedded_only, report
from memory.base import AuditReport
from routing.aliases import default_routing
from routing.config import EMBEDDED, Deployment
from teams.base import Run, RunStatus
from teams.records import RunOutcome

EMBEDDED_ONLY = default_routing().public()  # no key, no Ollama: the embedded model serves every alias


def _with(alias: str, *models: str) -> dict[str, Any]:
    routing: dict[str, Any] = json.loads(json.dumps(EMBEDDED_ONLY))
    routing["aliases"][alias] = [Deployment(model=m).public() for m in models]
    return routing


def test_the_defaults_without_a_key_are_embedded_only() -> None:
    assert {d["model"] for chain in EMBEDDED_ONLY["aliases"].values() for d in chain} == {EMBEDDED}
    assert embedded_only(EMBEDDED_ONLY)


@pytest.mark.parametrize(
    "routing",
    [
        pytest.param(default_routing(scripted=True).public(), id="scripted test model"),
        pytest.param(default_routing(openai_key="OPENAI_API_KEY").public(), id="a cloud model first"),
        pytest.param(default_routing(ollama_base="http://gpu-box:11434").public(), id="ollama first"),
        pytest.param(_with("factory/coder", "openai/gpt-4o", EMBEDDED), id="one alias with a real model"),
        pytest.param(_with("factory/cheap", "ollama_chat/qwen2.5"), id="one alias without the embedded model"),
        pytest.param(_with("factory/fast", "factory-local/scripted"), id="one alias scripted"),
        pytest.param(None, id="no recorded routing"),
        pytest.param({}, id="empty"),
        pytest.param({"aliases": {}}, id="no aliases"),
        pytest.param({"aliases": {"factory/coder": []}}, id="an empty chain"),
        pytest.param({"aliases": {"factory/coder": "factory-local/smollm2"}}, id="not a chain"),
    ],
)
def test_any_other_model_or_an_unknown_routing_is_not(routing: dict[str, Any] | None) -> None:
    assert not embedded_only(routing)


def _outcome(routing: dict[str, Any] | None) -> RunOutcome:
    now = datetime.now(UTC)
    run = Run(
        id="r1", requirement="a todo app", pipeline=["documentation"], pipeline_name="custom",
        status=RunStatus.COMPLETE, artifacts_dir="/tmp/out/r1", routing=routing, created_at=now, updated_at=now,
    )  # fmt: skip
    audit = AuditReport(run_id="r1", entries=3, head_sha256="ab" * 32, intact=True, problems=[])
    return RunOutcome(run=run, stages=[], escalations=[], audit=audit)


def _printed(routing: dict[str, Any] | None, as_json: bool, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(typer.Exit) as exc:
        report(_outcome(routing), as_json)
    assert exc.value.exit_code == 0
    return capsys.readouterr().out


def test_the_text_summary_says_so_and_how_to_give_a_real_model(capsys: pytest.CaptureFixture[str]) -> None:
    out = _printed(EMBEDDED_ONLY, False, capsys)
    assert "run r1: complete" in out
    assert "for trying the factory, not for use" in out and EMBEDDED in out
    assert "`factory routing set factory/coder MODEL`" in out and "`factory secrets set NAME`" in out


def test_no_notice_for_the_scripted_model_nor_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    scripted = _printed(default_routing(scripted=True).public(), False, capsys)
    assert "run r1: complete" in scripted and "not for use" not in scripted
    data = json.loads(_printed(EMBEDDED_ONLY, True, capsys))
    assert data["run_id"] == "r1" and "not for use" not in json.dumps(data)
