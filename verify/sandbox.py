"""The sandbox of produced code (issue 19): Debian's bubblewrap, as an unprivileged user, with limits.

What runs inside sees the machine read-only, except its scratch directory (``workdir``, bound
read-write at the same path); the invoking user's home, ``/root``, ``/tmp``, ``/run``, ``/var/tmp``
and the ``hidden`` paths (the factory's data directory and configuration: the composition root
passes them) are empty read-only tmpfs (a hidden file cannot be opened). It has no network (its own
empty network namespace: not even loopback reaches the host's), its own PID, IPC and UTS
namespaces, no nested user namespaces, a fresh ``/dev`` (read-only, with a 64 MiB ``/dev/shm``),
no environment of the host (only ``PATH``, ``HOME`` and ``TMPDIR`` = the workdir, ``LANG``,
``PYTHONDONTWRITEBYTECODE``, ``PYTHONHASHSEED`` and what the caller passes), and the policy's
limits: CPU seconds, address space, processes, file size (util-linux's ``prlimit`` sets them
inside the sandbox, so the process count is the sandbox's own), output kept, and wall time.

As root, each execution runs as a uid of its own (the lowest free one of ``uids``, held by a lock
file under ``lock_dir``), to which the workdir is handed over for the run and from which it is
taken back afterwards; root itself would be exempt from the process limit. That uid must reach the
workdir: its parent directories must be searchable by others (``tempfile.mkdtemp()`` under
``/tmp`` is; pytest's ``tmp_path`` under a 0700 directory is not). Not as root, it runs as the
current user.

When ``run`` returns, nothing of the sandbox is left running (:mod:`verify.sandbox_process`): the
command's end ends the sandbox's PID namespace, a kill (wall time, output, cancellation) kills the
namespace's init, and ``run`` waits for that init to be gone. bubblewrap leaves its init to the
machine's init to reap (a zombie until then): run the factory under an init that reaps (systemd,
``docker run --init``, compose ``init: true``); as PID 1 itself, the factory reaps it. Without
bubblewrap (or ``prlimit``) nothing runs: :class:`~verify.base.SandboxUnavailable` says what to install.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from verify.base import SandboxPolicy, SandboxRun, SandboxUnavailable
from verify.sandbox_process import SandboxProcess, classify

__all__ = ["BubblewrapSandbox", "ExecutionRefused", "classify", "default_sandbox", "sandbox_available"]

INSTALL = "install Debian's `bubblewrap` package (apt-get install bubblewrap)"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UIDS = range(200_000, 265_000)
LOCK_DIR = Path("/run/factory-sandbox")
SHM_BYTES = 64 * 1024 * 1024
NOFILE = 1024
PROBE_TIMEOUT_S = 10.0
MAX_ENTRIES = 100_000  # files of a workdir handed over to the sandbox's uid
DEFAULT_HIDDEN = (Path("/root"), Path("/tmp"), Path("/run"), Path("/var/tmp"))
NAMESPACES = ("--unshare-all", "--unshare-user", "--disable-userns", "--hostname", "sandbox")
LIFETIME = ("--die-with-parent", "--new-session")


class ExecutionRefused(Exception):
    """The policy does not let produced code run (``execute`` is false): nothing was started."""


def sandbox_available() -> str | None:
    """None when bubblewrap can make a sandbox here; else the sentence saying what to install or allow."""
    try:
        BubblewrapSandbox().probe()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


def default_sandbox(hidden: Sequence[Path] = ()) -> BubblewrapSandbox:
    """The factory's sandbox: ``hidden`` are the factory's own paths (its data directory and
    configuration file); the running interpreter's prefixes stay visible (read-only) even under a
    hidden home, so a check can run this Python inside when the sandbox's user may reach it."""
    prefixes = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return BubblewrapSandbox(hidden=hidden, expose=sorted(prefixes))


def _check_policy(policy: SandboxPolicy) -> None:
    if not policy.execute:
        raise ExecutionRefused("the policy does not allow running produced code (execute = false): nothing was run")
    sizes = (policy.cpu_s, policy.memory_mb, policy.max_procs, policy.output_kib)
    if min(sizes) < 1 or not policy.wall_s > 0:
        raise ValueError(f"sandbox limits must be positive: {policy.summary()}")


def _check_command(argv: Sequence[str], env: dict[str, str] | None) -> None:
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise ValueError("the sandbox runs a non-empty list of arguments without NUL bytes, e.g. ['python3', 'x.py']")
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key + value:
            raise ValueError(f"bad environment variable for the sandbox: {key!r}")


def _searchable(path: Path, uid: int | None) -> bool:
    """Whether ``uid`` (None: this process) may traverse the directory; a uid of the sandbox's range
    has no group but its own, which owns nothing, so it has the permissions of others."""
    if uid is None:
        return os.access(path, os.X_OK)
    st = os.stat(path)
    return bool(st.st_mode & (stat.S_IXUSR if st.st_uid == uid else stat.S_IXOTH))


def _blocked_by(path: Path, uid: int | None) -> Path | None:
    """The first parent of ``path`` that ``uid`` cannot traverse, if any."""
    for parent in reversed(path.parents):
        if not _searchable(parent, uid):
            return parent
    return None


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _entries(root: Path) -> Iterator[Path]:
    count = 0
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            count += 1
            if count > MAX_ENTRIES:
                raise ValueError(f"the sandbox's workdir {root} holds over {MAX_ENTRIES} files: give it a smaller one")
            yield Path(folder, name)


def _hand_over(root: Path, uid: int, gid: int, mode: int) -> None:
    """``root`` and what it holds to ``uid`` (symlinks themselves, never their targets; a file with
    other hard links keeps its owner: it may be a link to a file outside)."""
    for entry in list(_entries(root)):
        st = entry.lstat()
        if stat.S_ISDIR(st.st_mode) or st.st_nlink == 1:
            os.chown(entry, uid, gid, follow_symlinks=False)
    os.chown(root, uid, gid)
    os.chmod(root, mode)


class BubblewrapSandbox:
    """:class:`~verify.base.Sandbox` over bubblewrap (see the module's docstring for what it isolates).

    ``hidden``: more paths to hide (directories become empty, files cannot be opened); ``expose``: paths
    under a hidden one to show again read-only (an interpreter under a home); ``uids``/``lock_dir``:
    the sandbox users as root. ``bwrap``/``prlimit``: the programs (default: found on PATH)."""

    def __init__(
        self,
        *,
        hidden: Sequence[Path] = (),
        expose: Sequence[Path] = (),
        bwrap: str | None = None,
        prlimit: str | None = None,
        uids: range = UIDS,
        lock_dir: Path = LOCK_DIR,
    ) -> None:
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        self.prlimit = prlimit or shutil.which("prlimit") or "/usr/bin/prlimit"
        self.hidden = [Path(os.path.realpath(p)) for p in (Path.home(), *DEFAULT_HIDDEN, *hidden)]
        self.expose = [Path(os.path.realpath(p)) for p in expose]
        self.as_root = os.geteuid() == 0
        self.uids = uids
        self.lock_dir = lock_dir
        self._probed = False
        if self.as_root and not uids:
            raise ValueError("the sandbox needs a range of uids to run as when the factory runs as root")

    # ------------------------------------------------------------------ what the sandbox sees

    def visible(self, path: Path) -> bool:
        """Whether ``path`` can be read inside the sandbox (not hidden, reachable by its user)."""
        real = Path(os.path.realpath(path))
        hidden = any(_within(real, h) for h in self.hidden) and not any(_within(real, e) for e in self.expose)
        uid = -1 if self.as_root else None  # any uid of the range: the permissions of others
        if hidden or not real.exists() or _blocked_by(real, uid) is not None:
            return False
        if uid is None:
            return os.access(real, os.R_OK)
        return bool(real.stat().st_mode & stat.S_IROTH)

    def python(self) -> str:
        """A Python interpreter the sandbox can run: this one if visible inside, else ``python3`` on its PATH."""
        if self.visible(Path(sys.executable)):
            return sys.executable
        found = shutil.which("python3", path=PATH)
        if found is None or not self.visible(Path(found)):
            raise SandboxUnavailable("no Python the sandbox may run: install Debian's `python3` package")
        return found

    def mounts(self, workdir: Path, uid: int | None) -> list[str]:
        """bubblewrap's filesystem arguments for one execution over ``workdir`` (resolved)."""
        args = ["--ro-bind", "/", "/", "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
        args += ["--remount-ro", "/dev", "--proc", "/proc"]
        covered: list[Path] = []
        for path in sorted(set(self.hidden), key=lambda p: len(p.parts)):
            if path == Path("/") or any(_within(path, c) for c in covered) or not path.exists():
                continue
            if _within(path, workdir):
                raise ValueError(f"the sandbox's workdir {workdir} holds the hidden path {path}: give it a scratch dir")
            if _blocked_by(path, uid) is not None:
                continue  # its user cannot reach it anyway (and bubblewrap could not mount over it)
            covered.append(path)
            args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
        for path in self.expose:
            under = any(_within(path, c) and c.is_dir() for c in covered)
            if under and path.exists() and _blocked_by(path, uid) is None:
                args += ["--ro-bind", str(path), str(path)]
        args += ["--bind", str(workdir), str(workdir)]
        for path in covered:
            if path.is_dir():
                args += ["--remount-ro", str(path)]
        return args

    def arguments(
        self, argv: Sequence[str], workdir: Path, policy: SandboxPolicy, uid: int | None, info_fd: int | None = None
    ) -> list[str]:
        """The whole command line: bubblewrap, then prlimit inside it, then ``argv``."""
        network = ["--share-net"] if policy.network else []  # never in the shipped policies
        info = ["--info-fd", str(info_fd)] if info_fd is not None else []
        limits = [
            f"--cpu={policy.cpu_s}:{policy.cpu_s + 1}",  # SIGXCPU, then SIGKILL a second later
            f"--as={policy.memory_mb * 1024 * 1024}",
            f"--nproc={policy.max_procs + 1}",  # bubblewrap's init in the sandbox counts too
            f"--fsize={policy.output_kib * 1024}",
            f"--nofile={NOFILE}",
            "--core=0",
        ]
        return [
            self.bwrap, *self.mounts(workdir, uid), *NAMESPACES, *network, *LIFETIME, *info, "--chdir", str(workdir),
            "--", self.prlimit, *limits, "--", *argv,
        ]  # fmt: skip

    def environment(self, workdir: Path, env: dict[str, str] | None) -> dict[str, str]:
        home = str(workdir)
        base = {"PATH": PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
        return {**base, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", **(env or {})}

    # ------------------------------------------------------------------ running

    def probe(self) -> None:
        """Run ``true`` in a sandbox (blocking, once per instance); ``SandboxUnavailable`` if it cannot."""
        if self._probed:
            return
        for program, package in ((self.bwrap, "bubblewrap"), (self.prlimit, "util-linux")):
            if not os.access(program, os.X_OK):
                name = Path(program).name
                raise SandboxUnavailable(f"the sandbox needs {name}: install Debian's `{package}` package")
        # --as-pid-1: no init in the sandbox, so bubblewrap waits for its child and leaves no orphan
        command = [self.bwrap, "--ro-bind", "/", "/", "--proc", "/proc", *NAMESPACES, *LIFETIME, "--as-pid-1"]
        command += ["--", self.prlimit]
        user: dict[str, Any] = {"user": self.uids[0], "group": self.uids[0], "extra_groups": []} if self.as_root else {}
        try:
            done = subprocess.run(
                [*command, "--nproc=8", "--", "true"], capture_output=True, text=True, env={"PATH": PATH},
                timeout=PROBE_TIMEOUT_S, cwd="/", **user,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(f"bubblewrap did not start ({exc}): {INSTALL}") from exc
        if done.returncode != 0:
            raise SandboxUnavailable(
                f"bubblewrap cannot make a sandbox here ({done.stderr.strip()[:300]}): unprivileged user namespaces "
                "must be allowed (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)"
            )
        self._probed = True

    async def run(
        self, argv: Sequence[str], *, workdir: Path, policy: SandboxPolicy, env: dict[str, str] | None = None
    ) -> SandboxRun:
        """Run ``argv`` in ``workdir`` under ``policy``; :class:`ExecutionRefused` if it may not run."""
        _check_policy(policy)
        _check_command(argv, env)
        workdir, before = await asyncio.to_thread(self._scratch, workdir)
        if not self._probed:
            await asyncio.to_thread(self.probe)
        if not self.as_root:
            return await self._execute(argv, workdir, policy, env, None)
        with self._uid() as uid:
            try:
                await asyncio.to_thread(_hand_over, workdir, uid, uid, 0o700)
                return await self._execute(argv, workdir, policy, env, uid)
            finally:
                mode = stat.S_IMODE(before.st_mode)
                await asyncio.to_thread(_hand_over, workdir, before.st_uid, before.st_gid, mode)

    def _scratch(self, workdir: Path) -> tuple[Path, os.stat_result]:
        """``workdir`` resolved, checked reachable by the sandbox's user, and its owner and mode."""
        real = Path(os.path.realpath(workdir))
        if not real.is_dir() or real == Path("/"):
            raise ValueError(f"the sandbox's workdir {workdir} must be an existing scratch directory")
        blocked = _blocked_by(real, -1 if self.as_root else None)
        if blocked is not None:
            raise ValueError(
                f"the sandbox's user cannot reach {real}: {blocked} is not searchable by others; "
                "make scratch directories where others may pass (tempfile.mkdtemp() under /tmp)"
            )
        return real, real.stat()

    @contextmanager
    def _uid(self) -> Iterator[int]:
        """The lowest uid of the range that no other sandbox of this machine holds, held meanwhile."""
        try:
            self.lock_dir.mkdir(mode=0o700, exist_ok=True)
            st = self.lock_dir.lstat()
        except OSError as exc:
            raise SandboxUnavailable(f"cannot create the sandbox's lock directory {self.lock_dir}: {exc}") from exc
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise SandboxUnavailable(f"{self.lock_dir} must be a directory of root's that only root may write")
        for uid in self.uids:
            fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)  # releases the lock
            return
        raise SandboxUnavailable(f"all {len(self.uids)} sandbox uids are in use: too many sandboxes at once")

    async def _execute(
        self, argv: Sequence[str], workdir: Path, policy: SandboxPolicy, env: dict[str, str] | None, uid: int | None
    ) -> SandboxRun:
        user: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
        info_r, info_w = os.pipe()
        try:
            command = await asyncio.to_thread(self.arguments, argv, workdir, policy, uid, info_w)
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.environment(workdir, env), cwd="/", start_new_session=True, pass_fds=(info_w,), **user,
            )  # fmt: skip
        except BaseException:
            os.close(info_r)
            raise
        finally:
            os.close(info_w)
        return await SandboxProcess(proc, os.fdopen(info_r, "rb", 0), policy).finish()
