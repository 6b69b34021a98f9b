"""Writing a run's artifacts to disk, atomically, with a manifest of SHA-256 hashes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.errors import PipelineError
from teams.results import Artifact


def sha256_text(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def write_artifact(root: Path, artifact: Artifact) -> Path:
    """Write one artifact under ``root``; the name was validated, this checks the resolved path too."""
    target = (root / artifact.name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise PipelineError(f"artifact {artifact.name!r} would be written outside the bundle; refused")
    _atomic_write(target, artifact.content)
    return target


def write_artifacts(root: Path, artifacts: Sequence[Artifact]) -> None:
    """Write a stage's artifacts; a name the file system refuses (e.g. ``docs`` beside ``docs/a.md``)
    is a ``PipelineError`` naming it."""
    for artifact in artifacts:
        try:
            write_artifact(root, artifact)
        except OSError as exc:
            raise PipelineError(
                f"artifact {artifact.name!r} cannot be written to the bundle ({exc.strerror or exc});"
                " revise the stage with feedback on its file names"
            ) from exc


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    path = root / "manifest.json"
    _atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return path
