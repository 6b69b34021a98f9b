"""Phase 1 on the real embedded SmolLM2 model through LiteLLM (slow: about a minute here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.settings import Settings
from factory.wiring import open_factory
from teams.base import RunStatus
from teams.results import TaskResult
from teams.revision import revise
from teams.slugs import ALL_TEAMS

OPERATOR_FEEDBACK = "Proceed on your stated assumptions and deliver the artifacts; the operator accepts the risk."

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_phase1_on_smollm2_gives_five_valid_results_and_a_verified_audit(
    pg_url: str, redis_base_url: str, redis_prefix: str, tmp_path: Path, redis: object
) -> None:
    # The 135M model rarely states a confidence above the default floor; this test is about the
    # model path producing valid results end to end, so the floor is lowered, as an operator may.
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_url,
        redis_url=redis_base_url,
        redis_prefix=redis_prefix,
        confidence_floor=0.0,
        scripted_model=None,
        openai_api_key=None,
        anthropic_api_key=None,
        ollama_api_base=None,
    )
    async with open_factory(settings, serve=ALL_TEAMS) as factory:  # its questions are answered by teams
        assert "smollm2" in factory.model_description
        outcome = await factory.engine.start(
            "Build a URL shortener service with an HTTP API: create short links, redirect, count clicks.", "phase1"
        )
        # The 135M model sometimes declares a stage BLOCKED for no good reason; the operator then
        # revises from that stage (workflow A step 7), as the supervised benchmark does.
        revisions = 0
        while outcome.run.status is RunStatus.WAITING_HUMAN and revisions < 4:
            [escalation] = outcome.escalations
            assert escalation.kind.value in ("blocked", "clarification") and escalation.question
            revisions += 1
            outcome = await revise(
                factory.engine, factory.store, factory.audit, outcome.run.id, escalation.team, OPERATOR_FEEDBACK
            )
        usage = await factory.store.usage(outcome.run.id)
        entries = await factory.audit.entries(outcome.run.id)
    assert outcome.run.status is RunStatus.COMPLETE, [(s.team, s.status, s.result) for s in outcome.stages]
    assert len(outcome.stages) == 5
    for stage in outcome.stages:
        assert stage.result is not None
        TaskResult.model_validate(stage.result.model_dump(mode="json"))  # schema-valid, round trip
        alias = next((u.alias for u in usage if u.team == stage.team), None)
        assert stage.model in (f"{alias} -> factory-local/smollm2", f"reused from {outcome.run.parent_run_id}")
    assert all(u.ok and u.model == "factory-local/smollm2" and u.tokens_out > 0 for u in usage)
    assert outcome.audit.intact and outcome.audit.entries == len(entries)
    snapshot = json.loads(entries[-1].payload)
    assert entries[-1].kind == "run.snapshot" and len(snapshot["results"]) == 5
    assert (
        json.loads((Path(outcome.run.artifacts_dir) / "manifest.json").read_text())["audit_head_sha256"]
        == entries[-1].sha256
    )
