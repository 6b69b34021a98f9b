"""Running a stage's checks: each applicable check with its own timeout, a crash or a hang reported
as that check's ``error`` (never fatal, never raised); and writing a workspace's files."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from factory.errors import InputError
from verify.base import Check, CheckReport, Outcome, Workspace

log = logging.getLogger(__name__)


async def run_checks(
    checks: Sequence[Check], workspace: Workspace, *, timeout_s: float = 60.0, concurrency: int = 2
) -> list[CheckReport]:
    """Every check that applies to one of ``workspace.targets``, over those targets, at most
    ``concurrency`` at a time; the reports in the checks' order (a check that applies to no target
    gives none)."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(check: Check) -> CheckReport | None:
        name = str(getattr(check, "name", type(check).__name__))
        try:
            artifacts = [t for t in workspace.targets if check.applies(t)]
        except Exception as exc:
            log.warning("check %s failed to say what it applies to: %r", name, exc)
            return _error(name, [], f"the check crashed choosing its files: {_describe(exc)}", 0.0)
        if not artifacts:
            return None
        async with gate:
            started = time.monotonic()
            try:
                report = await asyncio.wait_for(check.run(workspace, artifacts), timeout_s)
            except TimeoutError:
                log.warning("check %s did not finish in %s s", name, timeout_s)
                return _error(name, artifacts, f"the check did not finish in {timeout_s:g} s", timeout_s)
            except Exception as exc:
                log.warning("check %s crashed: %r", name, exc)
                return _error(name, artifacts, f"the check crashed: {_describe(exc)}", time.monotonic() - started)
            elapsed = time.monotonic() - started
        if not isinstance(report, CheckReport):
            return _error(name, artifacts, f"the check returned {type(report).__name__}, not a report", elapsed)
        return report if report.duration_s else report.model_copy(update={"duration_s": round(elapsed, 3)})

    reports = await asyncio.gather(*(one(c) for c in checks))
    return [r for r in reports if r is not None]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:1500]}" if text else type(exc).__name__


def _error(check: str, artifacts: list[str], detail: str, elapsed: float) -> CheckReport:
    return CheckReport(
        check=check, outcome=Outcome.ERROR, artifacts=artifacts, detail=detail, duration_s=round(elapsed, 3)
    )


def write_workspace(root: Path, files: Mapping[str, str]) -> None:
    """Write each file (relative name → text) under ``root``; a name that is absolute, climbs with
    ``..``, or would land outside ``root`` (through a symlink) is refused with ``InputError`` before
    anything is written."""
    top = root.resolve()
    targets: list[tuple[Path, str]] = []
    for name, content in files.items():
        pure = PurePosixPath(name)
        if not name or "\x00" in name or "\\" in name or pure.is_absolute() or ".." in pure.parts:
            raise InputError(f"refused file name {name!r}: use a relative path without '..'")
        path = top.joinpath(*pure.parts)
        if not path.resolve().is_relative_to(top) or path.resolve() == top:
            raise InputError(f"refused file name {name!r}: it would be written outside the workspace")
        targets.append((path, content))
    for path, content in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or not path.parent.resolve().is_relative_to(top):
            raise InputError(f"refused to write {path.relative_to(top)}: a link leads outside the workspace")
        path.write_text(content, encoding="utf-8")
