"""Where a bundle may go, checked before a run exists (issue 13, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.errors import InputError
from teams.base import RunStatus
from teams.places import check_bundle_root
from teams.revision import revise
from tests.unit.teams.test_gate import Harness


def test_a_new_directory_is_created(tmp_path: Path) -> None:
    root = check_bundle_root(tmp_path / "a" / "b")
    assert root == (tmp_path / "a" / "b").resolve() and root.is_dir()


@pytest.mark.parametrize(
    ("place", "needle"),
    [
        ("FILE", "is a file"),
        ("FILE/below", "cannot be created"),
        ("/dev/null", "under /dev"),
        ("/dev/shm/factory-bundles", "under /dev"),
        ("/proc", "under /proc"),
        ("/proc/self/factory", "under /proc"),
        ("/sys/kernel", "under /sys"),
        ("LINK", "under /proc"),
    ],
)
def test_places_that_cannot_hold_a_bundle_are_refused(tmp_path: Path, place: str, needle: str) -> None:
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "LINK").symlink_to("/proc/self")
    target = Path(place.replace("FILE", str(tmp_path / "FILE")).replace("LINK", str(tmp_path / "LINK")))
    with pytest.raises(InputError, match=needle) as exc:
        check_bundle_root(target)
    assert exc.value.exit_code == 2 and "--out" in str(exc.value)
    assert (tmp_path / "FILE").read_text() == "x"


async def test_revise_refuses_a_bad_out_before_creating_the_run(tmp_path: Path) -> None:
    h = Harness(tmp_path / "runs", {})
    parent = await h.run()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        await revise(h.engine, h.store, h.audit, parent.run.id, "qa-engineering", "more", out_dir=tmp_path / "file")
    assert [r.id for r in await h.store.runs_with_status(list(RunStatus))] == [parent.run.id]
