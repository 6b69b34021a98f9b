"""Artifact names: one canonical path per file, or refused; the bundle writer never leaves the bundle."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from factory.errors import PipelineError
from teams.base import StoredArtifact
from teams.bundle import (
    MANIFEST_NAME,
    MAX_NAME_CHARS,
    RESERVED_NAMES,
    canonical_name,
    sha256_text,
    write_artifact,
    write_manifest,
)
from teams.records import replaced_artifacts
from teams.results import Artifact, TaskResult
from teams.roster import roster
from teams.tools import Toolbox, WriteArtifactArgs, WriteArtifactCall

TEAMS = list(roster().values())

SEGMENTS = [
    "", ".", "..", "...", "a", "B", "x.md", ".hidden", ".git", "a b", "a\\b", "\x00", "\x1b[2J", "\r", "é",
    "\ud800", "manifest.json", "MANIFEST.JSON", "-", "_", "a" * 101, "c:", "~", "*", "%2e%2e",
]  # fmt: skip
structured = st.lists(st.sampled_from(SEGMENTS) | st.text(alphabet="aB./_-", max_size=4), min_size=1, max_size=10).map(
    "/".join
)
plausible = st.lists(st.sampled_from([".", "a", "x.md", "Docs", "src", "a-b_c.py", "v1.2"]), min_size=1, max_size=6)
names = st.one_of(
    plausible.map("/".join),
    structured,
    st.text(max_size=40),
    st.text(alphabet="ab./\\_- \x00", max_size=30),
    st.sampled_from(["/", ".", "./", "//", "x.md/", "x.md/.", "/x.md", "a" * (MAX_NAME_CHARS + 1)]),
)
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def result_with(*artifact_names: str) -> dict[str, Any]:
    artifacts = [{"name": n, "kind": "text", "content": f"file {i}"} for i, n in enumerate(artifact_names)]
    return {"status": "COMPLETE", "reasoning": "r", "artifacts": artifacts, "confidence": 0.9}


def everything_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@SETTINGS
@given(name=names)
def test_any_name_becomes_one_canonical_path_inside_the_bundle_or_is_refused(name: str) -> None:
    try:
        canonical = canonical_name(name)
    except ValueError as exc:
        assert str(exc)  # the model is told why
        with pytest.raises(ValidationError):
            Artifact(name=name, kind="text", content="x")
        return
    parts = canonical.split("/")
    assert not canonical.startswith("/") and len(canonical) <= MAX_NAME_CHARS
    assert all(p not in ("", ".", "..") and not p.startswith(".") for p in parts)
    assert canonical_name(canonical) == canonical  # canonical is a fixed point
    assert PurePosixPath(canonical) == PurePosixPath(name)  # and the same file POSIX would open
    assert canonical.casefold() not in RESERVED_NAMES
    assert Artifact(name=name, kind="text", content="x").name == canonical

    with tempfile.TemporaryDirectory() as outside:
        root = Path(outside) / "bundle"
        written = write_artifact(root, Artifact(name=name, kind="text", content="body"))
        target = root / canonical
        assert written == target and target.is_file() and not target.is_symlink()
        assert target.resolve().is_relative_to(root.resolve()) and target.resolve() != root.resolve()
        assert target.read_text() == "body"
        assert os.listdir(outside) == ["bundle"]  # nothing beside the bundle, not even a temporary file
        assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temporary file left inside


@st.composite
def spellings(draw: st.DrawFn, canonical: str) -> str:
    """Another spelling of the same file: './' segments anywhere, and letters in another case."""
    parts = canonical.split("/")
    out: list[str] = []
    for part in parts:
        out += ["."] * draw(st.integers(0, 2))
        out.append(part.swapcase() if draw(st.booleans()) else part)
    return "/".join(out)


@SETTINGS
@given(name=names, data=st.data())
def test_two_names_for_one_path_never_both_land_in_one_result(name: str, data: st.DataObject) -> None:
    try:
        canonical = canonical_name(name)
    except ValueError:
        return
    other = data.draw(spellings(canonical))
    try:
        canonical_name(other)
    except ValueError:
        return  # another spelling may itself be reserved or refused: then it cannot land at all
    with pytest.raises(ValidationError, match="unique"):
        TaskResult.model_validate(result_with(name, other))
    # Through the tools too: a written file and the result's own spelling of it are one artifact.
    toolbox = Toolbox(TEAMS[0], recall_source=_NoRecall())
    toolbox.written[canonical] = Artifact(name=canonical, kind="text", content="written")
    merged = toolbox.merge(TaskResult.model_validate(result_with(other)))
    assert len(merged.artifacts) == 1 and merged.artifacts[0].content == "file 0"


class _NoRecall:
    def available(self) -> bool:
        return False

    async def recall(self, query: str, *, limit: int) -> list[Any]:
        return []


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("./x.md", "x.md"), ("docs/./a.md", "docs/a.md"), ("././a/b.py", "a/b.py"), ("docs/manifest.json", None)],
)
def test_dot_segments_are_dropped(name: str, canonical: str | None) -> None:
    assert canonical_name(name) == (canonical or name)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        (".", "names a folder"),
        ("./", "names a folder"),
        ("docs/", "names a folder"),
        ("docs/.", "names a folder"),
        ("a//b.md", "empty folder name"),
        ("manifest.json", "written by the factory"),
        ("./Manifest.JSON", "written by the factory"),
        ("a/../b.md", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a/.git/config", "hidden part"),
        ("a\\b.md", "only letters"),
        ("x\x00.md", "only letters"),
        ("", "non-empty"),
        ("/".join(["d"] * 9), "deep"),
        ("x" * 101 + ".md", "over 100"),
    ],
)
def test_refusals_say_why(name: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        canonical_name(name)


def test_every_deliverable_name_of_the_roster_is_already_canonical() -> None:
    for member in TEAMS:
        for deliverable in member.produces:
            assert canonical_name(deliverable.name) == deliverable.name


def test_write_artifact_tool_keys_files_by_the_canonical_name() -> None:
    call = WriteArtifactCall(tool="write_artifact", arguments=WriteArtifactArgs(name="./docs/./a.md", content="x"))
    assert call.arguments.name == "docs/a.md"


# The writer on its own: names that slipped past validation and hostile bundle contents.


def _unchecked(name: str, content: str = "x") -> Artifact:
    return Artifact.model_construct(name=name, kind="text", content=content)


@pytest.mark.parametrize("name", [".", "./", "", "..", "../x.md", "a/../../x.md", "/tmp/x.md", "manifest.json", ".tmp"])
def test_the_writer_refuses_unchecked_names_and_writes_nothing(tmp_path: Path, name: str) -> None:
    root = tmp_path / "bundle"
    root.mkdir()
    with pytest.raises(PipelineError, match="nothing was written"):
        write_artifact(root, _unchecked(name))
    assert os.listdir(tmp_path) == ["bundle"] and root.is_dir() and os.listdir(root) == []


def test_a_symlinked_folder_in_the_bundle_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "docs").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PipelineError, match="symbolic link"):
        write_artifact(root, Artifact(name="docs/a.md", kind="text", content="x"))
    assert os.listdir(outside) == []


def test_a_symlinked_file_in_the_bundle_is_not_replaced_or_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "a.md").symlink_to(victim)
    with pytest.raises(PipelineError, match="symbolic link"):
        write_artifact(root, Artifact(name="a.md", kind="text", content="x"))
    assert victim.read_text() == "keep" and (root / "a.md").is_symlink()


def test_a_symlinked_bundle_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "bundle").symlink_to(real, target_is_directory=True)
    with pytest.raises(PipelineError, match="not a folder"):
        write_artifact(tmp_path / "bundle", Artifact(name="a.md", kind="text", content="x"))
    assert os.listdir(real) == []


def test_a_file_where_a_folder_should_be_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    write_artifact(root, Artifact(name="docs", kind="text", content="a file"))
    with pytest.raises(PipelineError, match="'docs' in the bundle is a file"):
        write_artifact(root, Artifact(name="docs/a.md", kind="text", content="x"))
    with pytest.raises(PipelineError, match="folder or a symbolic link, not a file"):
        write_artifact(tmp_path, Artifact(name="bundle", kind="text", content="x"))
    assert (root / "docs").read_text() == "a file"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, monkeypatch: Any) -> None:
    root = tmp_path / "bundle"
    write_artifact(root, Artifact(name="d/a.md", kind="text", content="old"))

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("teams.bundle.os.replace", full_disk)
    with pytest.raises(PipelineError, match="No space left"):
        write_artifact(root, Artifact(name="d/a.md", kind="text", content="new"))
    assert everything_under(root) == {"d", "d/a.md"} and (root / "d" / "a.md").read_text() == "old"


def test_the_manifest_is_written_by_the_same_writer_under_its_reserved_name(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    write_artifact(root, Artifact(name="docs/manifest.json", kind="json", content="{}"))
    path = write_manifest(root, {"artifacts": []})
    assert path == root / MANIFEST_NAME and everything_under(root) == {"docs", "docs/manifest.json", MANIFEST_NAME}


# A later stage overwriting an earlier stage's file is reported with what it replaced.


def _stored(stage: int, name: str, content: str) -> StoredArtifact:
    team = TEAMS[stage].slug
    return StoredArtifact(
        run_id="r", stage_index=stage, team=team, name=name, kind="text", sha256=sha256_text(content), bytes=1
    )


def test_replaced_artifacts_names_the_earlier_writer_of_each_overwritten_file() -> None:
    earlier = [_stored(0, "docs/a.md", "v0"), _stored(1, "README.md", "v1"), _stored(2, "docs/a.md", "v2")]
    replaced = replaced_artifacts(earlier, 3, ["docs/a.md", "readme.md", "new.md"])
    assert replaced == {
        "docs/a.md": {"name": "docs/a.md", "stage": 2, "team": TEAMS[2].slug, "sha256": sha256_text("v2")},
        "readme.md": {"name": "README.md", "stage": 1, "team": TEAMS[1].slug, "sha256": sha256_text("v1")},
    }
    assert replaced_artifacts(earlier, 2, ["docs/a.md"])["docs/a.md"]["stage"] == 0  # its own file is no news
    assert replaced_artifacts(earlier, 3, ["new.md"]) == {}
