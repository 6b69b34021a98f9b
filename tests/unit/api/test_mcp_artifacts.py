"""Reading an artifact for an assistant: only a recorded name, only a plain file inside the bundle."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from api.mcp.artifacts import artifact_uri, read_artifact, recorded
from factory.errors import InputError, PipelineError
from teams.base import StoredArtifact


def stored(name: str, content: str = "", stage: int = 0) -> StoredArtifact:
    data = content.encode()
    return StoredArtifact(
        run_id="run-1", stage_index=stage, team="business-analysis", name=name, kind="markdown",
        sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
    )  # fmt: skip


def write(root: Path, name: str, content: str) -> StoredArtifact:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return stored(name, content)


def test_a_recorded_artifact_is_read_and_found_intact(tmp_path: Path) -> None:
    art = write(tmp_path, "docs/adr/0001-db.md", "# ADR 1\nPostgres.\n")
    got = read_artifact(tmp_path, art)
    assert (got.text, got.bytes, got.truncated, got.intact) == ("# ADR 1\nPostgres.\n", 18, False, True)
    assert artifact_uri("run-1", art.name) == "factory://runs/run-1/artifacts/docs%2Fadr%2F0001-db.md"


def test_a_large_file_is_cut_short_and_one_changed_on_disk_is_said_to_be(tmp_path: Path) -> None:
    art = write(tmp_path, "big.txt", "x" * 5000)
    got = read_artifact(tmp_path, art, limit=1000)
    assert got.truncated and len(got.text) == 1000 and got.bytes == 5000 and got.intact  # hashed in full
    (tmp_path / "big.txt").write_text("changed")
    assert not read_artifact(tmp_path, art).intact


def test_only_names_the_run_recorded_are_taken(tmp_path: Path) -> None:
    listed = [stored("docs/a.md", stage=0), stored("docs/a.md", stage=2), stored("b.md")]
    assert recorded(listed, "docs%2Fa.md", "run-1").stage_index == 2  # the last writer's file is on disk
    assert recorded(listed, "./docs/a.md", "run-1").name == "docs/a.md"  # canonical form
    with pytest.raises(InputError, match="has no artifact 'c.md'"):
        recorded(listed, "c.md", "run-1")
    for hostile in ("../etc/passwd", "%2E%2E%2Fetc%2Fpasswd", "/etc/passwd", "docs/../../x", ".git/config"):
        with pytest.raises(InputError, match="factory://runs/run-1/artifacts"):
            recorded(listed, hostile, "run-1")


def test_a_symbolic_link_in_the_bundle_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    os.symlink(outside / "secret.txt", bundle / "a.md")
    os.symlink(outside, bundle / "docs")
    for name in ("a.md", "docs/secret.txt"):
        with pytest.raises(PipelineError, match="not a plain file inside the bundle"):
            read_artifact(bundle, stored(name, "secret"))


def test_a_missing_file_or_a_fifo_is_refused_plainly(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="'gone.md' of run run-1 is not in the bundle any more"):
        read_artifact(tmp_path, stored("gone.md"))
    os.mkfifo(tmp_path / "pipe.md")
    with pytest.raises(PipelineError, match="not a plain file"):
        read_artifact(tmp_path, stored("pipe.md"))  # would block forever if opened for reading as a file
