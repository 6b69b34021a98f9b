"""Contracts of the ``teams`` package: objectives, runs, stage records and the stores behind them.

Callers see Protocols; the Postgres store and the in-memory twin implement them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from teams.lease import Lease
from teams.results import TaskResult
from teams.slugs import TeamSlug


class StageStatus(StrEnum):
    """Where one stage of a run stands."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    NEEDS_CLARIFICATION = "needs_clarification"
    BLOCKED = "blocked"
    WAITING_HUMAN = "waiting_human"
    FAILED = "failed"
    SKIPPED = "skipped"


class RunStatus(StrEnum):
    """Where a run stands."""

    RUNNING = "running"
    WAITING_HUMAN = "waiting_human"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Objective(BaseModel):
    """A bounded task with acceptance criteria, given to one team."""

    model_config = ConfigDict(frozen=True)

    id: str
    run_id: str
    team: TeamSlug
    goal: str
    acceptance_criteria: list[str]
    attempt: int = 1
    hop_depth: int = 0


class StageRecord(BaseModel):
    """One stage of one run, as stored."""

    run_id: str
    index: int
    team: TeamSlug
    status: StageStatus = StageStatus.PENDING
    attempts: int = 0
    clarifications: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    model: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: TaskResult | None = None
    #: The verification gate's figures for its latest result (checks run/passed/failed, tests,
    #: security findings by severity); None when no checks ran.
    checks: dict[str, Any] | None = None


class Run(BaseModel):
    """One execution of a pipeline."""

    id: str
    requirement: str
    pipeline: list[TeamSlug]
    pipeline_name: str
    status: RunStatus = RunStatus.RUNNING
    artifacts_dir: str = ""
    parent_run_id: str | None = None  # set on a revision: the run it revises
    feedback: str | None = None  # the operator's revision feedback, anchored in every objective
    #: The model routing the run started with and keeps (``RoutingConfig.public()``: no secret).
    routing: dict[str, Any] | None = None
    #: The run policy it started with and keeps (gate limits, budgets, clarification limits), as
    #: the operator set it in the chat's settings panel; None: the process's settings.
    policy: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def new(cls, requirement: str, pipeline: list[TeamSlug], name: str, bundles: Path, **fields: Any) -> Run:
        """A new run record (not yet stored), its bundle a folder named after it under ``bundles``."""
        created = datetime.now(UTC)
        run_id = f"run-{created:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        artifacts_dir = str((bundles / run_id).resolve())
        return cls(id=run_id, requirement=requirement, pipeline=pipeline, pipeline_name=name,
                   artifacts_dir=artifacts_dir, created_at=created, updated_at=created, **fields)  # fmt: skip


class StoredArtifact(BaseModel):
    """An artifact written to the run's bundle."""

    run_id: str
    stage_index: int
    team: TeamSlug
    name: str
    kind: str
    sha256: str
    bytes: int = Field(ge=0)


#: Why a driver lost its run (``Lease.lost``): a write of it was refused, or the lease's renewal was.
TAKEN_OVER = "another process took its lease over, or an operator cancelled the run"
RENEWAL_REFUSED = (
    "another process took it over (this one stalled past the lease's lifetime), or an operator cancelled the run"
)


class RunStore(Protocol):
    """Durable state of runs, stages and artifacts. Every write of a run's state names the ``Lease``
    it is made under and is refused (``LeaseLost``) in its own transaction if that lease no longer
    holds the run: one driver per run, even when a stalled one wakes up (see ``teams.lease``)."""

    async def create_run(self, run: Run, stages: Sequence[StageRecord] = (), *, lease: Lease) -> None:
        """Store a new run with its stages, atomically; a run that exists is left as it is."""
        ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def set_run_status(
        self, run_id: str, status: RunStatus, *, lease: Lease, stages: Sequence[StageRecord] = ()
    ) -> None:
        """Set the run's status and save ``stages`` (as ``save_stage`` does) with it, atomically."""
        ...

    async def save_stage(self, stage: StageRecord, artifacts: Sequence[StoredArtifact] = (), *, lease: Lease) -> None:
        """Insert or replace the stage (idempotent by run id and index), and with it, atomically,
        the artifacts it produced (replaced by name)."""
        ...

    async def stages(self, run_id: str) -> list[StageRecord]: ...

    async def runs_with_status(
        self, statuses: Sequence[RunStatus], *, limit: int = 100, exclude: Sequence[str] = ()
    ) -> list[Run]:
        """Runs in any of ``statuses`` but for the ``exclude``d ids, oldest update first."""
        ...

    async def recent_runs(self, *, limit: int = 10) -> list[Run]:
        """The newest runs first (by creation)."""
        ...

    def lease(self, run_id: str) -> AbstractAsyncContextManager[Lease]:
        """Hold the run for this process while the block runs (one driver per run, across processes),
        renewed in the background; raises ``RunBusy`` at once if another holds it. A killed process's
        lease ends with it (on this host) or when it expires."""
        ...

    async def seize(self, run_id: str) -> Lease:
        """Take the run's lease whoever holds it, live or not (an operator cancelling the run): the
        holder's next write is refused (``LeaseLost``), so it stops and writes nothing more. A write
        of the holder's under way commits first. Hold the lease with ``holding``."""
        ...

    def holding(self, lease: Lease) -> AbstractAsyncContextManager[Lease]:
        """Keep ``lease`` (from ``seize``, or a claim) renewed while the block runs; let it go at the end."""
        ...

    async def renew(self, lease: Lease) -> None:
        """Extend the lease by its full lifetime, or ``LeaseLost`` if it no longer holds the run."""
        ...

    async def hold(self, lease: Lease, *, for_s: float) -> None:
        """Make sure ``lease`` holds the run ``for_s`` seconds more (renewed only if not known to),
        or ``LeaseLost``: work that no commit can fence (files) is done within that time."""
        ...

    async def save_artifacts(self, artifacts: Sequence[StoredArtifact], *, lease: Lease) -> None: ...

    async def artifacts(self, run_id: str) -> list[StoredArtifact]: ...
