"""Teams: the roster, ``TaskResult``, the runner, the gate and the pipeline engine."""

from teams.base import Objective, Run, RunStatus, RunStore, StageRecord, StageStatus, StoredArtifact
from teams.results import Artifact, Clarification, TaskResult, TaskStatus
from teams.slugs import ALL_TEAMS, PIPELINES, SHARED_BANK, TeamSlug

__all__ = [
    "ALL_TEAMS", "PIPELINES", "SHARED_BANK", "Artifact", "Clarification", "Objective", "Run", "RunStatus",
    "RunStore", "StageRecord", "StageStatus", "StoredArtifact", "TaskResult", "TaskStatus", "TeamSlug",
]  # fmt: skip
