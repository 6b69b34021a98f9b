"""Running produced code for a check: only through ``workspace.sandbox``, never bare; and finding
where in the workspace a traceback ends (to attribute a failure to the file, and team, it lies in)."""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import sys
import sysconfig
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from verify.base import SandboxRun, SandboxUnavailable, Workspace
from verify.checks._common import NO_EXECUTE, NO_SANDBOX

# `File "backend/app.py", line 3, in f` (Python) and `backend/app.py:3: in f` (pytest)
VERSION_TIMEOUT_S = 10.0
_FRAME = re.compile(r'File "(?P<a>[^"\n]+\.py)", line (?P<al>\d+)|^(?P<b>[^\s:"][^:\n]*\.py):(?P<bl>\d+):', re.M)


class NotRun(Exception):
    """The code was not run: no sandbox here, or the policy forbids it (the message says which)."""


@dataclass(frozen=True)
class Interpreter:
    """The Python to run inside the sandbox and what ``PYTHONPATH`` must add for it to see this
    virtualenv's packages (pytest, and what produced code may import)."""

    executable: str
    path: tuple[str, ...] = ()


async def interpreter(workspace: Workspace) -> Interpreter:
    """The sandbox's Python (``sandbox.python()`` where it offers one, else this process's own).

    When the sandbox cannot reach this interpreter (a virtualenv over a Python under a hidden home)
    it offers another: if that one is the same Python version, this virtualenv's site-packages go on
    its path; of another version, it runs with its own packages only."""
    offered = getattr(workspace.sandbox, "python", None)
    executable = str(offered()) if callable(offered) else sys.executable
    if executable == sys.executable:
        return Interpreter(executable)
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if await asyncio.to_thread(_version, executable) != mine:
        return Interpreter(executable)
    paths = sysconfig.get_paths()
    return Interpreter(executable, tuple(dict.fromkeys((paths["purelib"], paths["platlib"]))))


@functools.cache
def _version(executable: str) -> str | None:
    """``major.minor`` of an interpreter of the machine's (trusted: it is not produced code)."""
    try:
        done = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def python_path(workspace: Workspace, extra: Sequence[str] = ()) -> str:
    """``PYTHONPATH`` for produced code: the workspace root (relative: the sandbox's working directory)
    and each folder holding Python files, so flat imports between them work, then ``extra``; a folder
    holding a module named like one of the standard library's is left out (it would shadow it)."""
    folders: dict[str, bool] = {}
    for name in [*workspace.targets, *workspace.others]:
        path = PurePosixPath(name)
        if path.suffix == ".py" and path.parent != PurePosixPath("."):
            folder = str(path.parent)
            shadows = path.stem in sys.stdlib_module_names
            folders[folder] = folders.get(folder, True) and not shadows
    return ":".join([".", *(f for f, ok in folders.items() if ok), *extra])


# The sandbox hands a workdir over to the uid of one execution at a time: executions over one
# workspace wait for each other (different workspaces run side by side).
_WORKDIR_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _workdir_lock(root: Path) -> asyncio.Lock:
    key = str(root.resolve())
    lock = _WORKDIR_LOCKS.get(key)
    if lock is None:
        lock = _WORKDIR_LOCKS[key] = asyncio.Lock()
    return lock


async def run_in_sandbox(workspace: Workspace, argv: Sequence[str], env: dict[str, str]) -> SandboxRun:
    """``argv`` in the workspace's sandbox under the team's policy; ``NotRun`` when it may not run."""
    if not workspace.policy.execute:
        raise NotRun(NO_EXECUTE)
    if workspace.sandbox is None:
        raise NotRun(NO_SANDBOX)
    try:
        async with _workdir_lock(workspace.root):
            return await workspace.sandbox.run(argv, workdir=workspace.root, policy=workspace.policy, env=env)
    except SandboxUnavailable as exc:
        raise NotRun(f"{NO_SANDBOX}: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "ExecutionRefused":  # the sandbox's own word on the policy
            raise NotRun(NO_EXECUTE) from exc
        raise


def workspace_file(path: str, files: Sequence[str]) -> str | None:
    """The workspace file a traceback's path names (relative, or absolute inside the sandbox)."""
    clean = path[2:] if path.startswith("./") else path
    if clean in files:
        return clean
    return next((f for f in sorted(files, key=len, reverse=True) if clean.endswith("/" + f)), None)


def last_frame(text: str, files: Sequence[str]) -> tuple[str, int] | None:
    """The last frame of a traceback that lies in one of ``files``: (file, line)."""
    found: tuple[str, int] | None = None
    for match in _FRAME.finditer(text):
        name = workspace_file(match.group("a") or match.group("b"), files)
        if name is not None:
            found = (name, int(match.group("al") or match.group("bl")))
    return found


def tail(text: str, lines: int = 6, chars: int = 800) -> str:
    kept = "\n".join(line for line in text.strip().splitlines()[-lines:])
    return kept[-chars:]


def stopped(run: SandboxRun, policy_wall_s: float) -> str:
    """Why the sandbox stopped a command, in a sentence."""
    if run.killed == "wall time":
        return f"it did not finish in {policy_wall_s:g} s (wall time) and was stopped"
    return f"it was stopped by the sandbox's {run.killed} limit"
