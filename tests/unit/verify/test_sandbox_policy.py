"""The sandbox's refusals, its command line and its reading of how a command ended: no bubblewrap
needed (what the real sandbox stops is in tests/integration/test_sandbox.py)."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from verify.base import SandboxPolicy, SandboxUnavailable
from verify.sandbox import BubblewrapSandbox, ExecutionRefused, classify

POLICY = SandboxPolicy(cpu_s=3, memory_mb=128, max_procs=8, output_kib=16, wall_s=5.0)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="factory-sandbox-unit-") as path:
        yield Path(path)


@pytest.fixture
def missing() -> BubblewrapSandbox:
    """A sandbox whose bubblewrap does not exist: whatever it would run cannot start."""
    return BubblewrapSandbox(bwrap="/nonexistent/bwrap", prlimit="/nonexistent/prlimit")


async def test_a_policy_without_execution_refuses_before_anything_starts(
    missing: BubblewrapSandbox, workdir: Path
) -> None:
    with pytest.raises(ExecutionRefused, match="execute = false"):
        await missing.run(["touch", "ran"], workdir=workdir, policy=SandboxPolicy(execute=False))
    assert not (workdir / "ran").exists()


async def test_without_bubblewrap_the_sandbox_is_unavailable_and_names_the_package(
    missing: BubblewrapSandbox, workdir: Path
) -> None:
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        await missing.run(["true"], workdir=workdir, policy=POLICY)
    with pytest.raises(SandboxUnavailable, match="apt|Debian"):
        missing.probe()


@pytest.mark.parametrize(
    "policy",
    [
        SandboxPolicy(cpu_s=0),
        SandboxPolicy(memory_mb=0),
        SandboxPolicy(max_procs=0),
        SandboxPolicy(output_kib=0),
        SandboxPolicy(wall_s=0),
    ],
)
async def test_limits_must_be_positive(missing: BubblewrapSandbox, workdir: Path, policy: SandboxPolicy) -> None:
    with pytest.raises(ValueError, match="positive"):
        await missing.run(["true"], workdir=workdir, policy=policy)


@pytest.mark.parametrize("argv", [[], "python3 x.py", ["python3", "a\0b"]])
async def test_a_command_is_a_non_empty_list_of_arguments(
    missing: BubblewrapSandbox, workdir: Path, argv: list[str]
) -> None:
    with pytest.raises(ValueError, match="list of arguments"):
        await missing.run(argv, workdir=workdir, policy=POLICY)


async def test_bad_environment_names_and_missing_workdirs_are_refused(
    missing: BubblewrapSandbox, workdir: Path
) -> None:
    with pytest.raises(ValueError, match="environment"):
        await missing.run(["true"], workdir=workdir, policy=POLICY, env={"A=B": "x"})
    with pytest.raises(ValueError, match="scratch directory"):
        await missing.run(["true"], workdir=workdir / "absent", policy=POLICY)
    with pytest.raises(ValueError, match="scratch directory"):
        await missing.run(["true"], workdir=Path("/"), policy=POLICY)


def test_the_environment_is_the_sandboxs_own_plus_what_the_caller_gives(workdir: Path) -> None:
    env = BubblewrapSandbox().environment(workdir, {"GIVEN": "1"})
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "GIVEN": "1",
    }


def test_the_command_line_cuts_the_network_and_sets_every_limit(workdir: Path) -> None:
    sandbox = BubblewrapSandbox(bwrap="/usr/bin/bwrap", prlimit="/usr/bin/prlimit")
    args = sandbox.arguments(["python3", "x.py"], workdir, POLICY, None)
    bwrap, limits = args[: args.index("/usr/bin/prlimit")], args[args.index("/usr/bin/prlimit") :]
    assert bwrap[0] == "/usr/bin/bwrap" and bwrap[-1] == "--"
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"):
        assert flag in bwrap
    assert "--share-net" not in bwrap
    assert bwrap[bwrap.index("--chdir") + 1] == str(workdir)
    assert ["--bind", str(workdir), str(workdir)] == bwrap[
        bwrap.index(str(workdir)) - 1 : bwrap.index(str(workdir)) + 2
    ]
    assert ["--ro-bind", "/", "/"] == bwrap[1:4]
    assert limits == [
        "/usr/bin/prlimit",
        "--cpu=3:4",
        f"--as={128 * 1024 * 1024}",
        "--nproc=9",
        f"--fsize={16 * 1024}",
        "--nofile=1024",
        "--core=0",
        "--",
        "python3",
        "x.py",
    ]
    with_network = sandbox.arguments(["true"], workdir, SandboxPolicy(network=True), None)
    assert "--share-net" in with_network  # only ever asked for explicitly: no shipped policy does


def test_hidden_paths_become_empty_and_are_remounted_read_only(workdir: Path) -> None:
    hidden = [Path("/usr/share/doc"), Path("/etc/hostname"), Path("/usr/share/doc/inside"), Path("/nonexistent/dir")]
    mounts = BubblewrapSandbox(hidden=hidden).mounts(workdir, None)
    pairs = list(zip(mounts, mounts[1:], strict=False))
    for folder in ("/usr/share/doc", "/tmp", str(Path.home())):
        assert ("--tmpfs", folder) in pairs and ("--remount-ro", folder) in pairs
    assert ("/dev/null", "/etc/hostname") in pairs  # a hidden file cannot be opened
    assert "/nonexistent/dir" not in mounts and "/usr/share/doc/inside" not in mounts
    # the workdir (under the hidden /tmp here) is bound after the tmpfs are made, before they turn read-only
    bind = mounts.index("--bind")
    assert mounts[bind : bind + 3] == ["--bind", str(workdir), str(workdir)]
    assert pairs.index(("--tmpfs", "/tmp")) < bind < pairs.index(("--remount-ro", "/tmp"))
    assert mounts[:4] == ["--ro-bind", "/", "/", "--dev"]


def test_a_workdir_that_holds_a_hidden_path_is_refused(workdir: Path) -> None:
    with pytest.raises(ValueError, match="holds the hidden path"):
        BubblewrapSandbox().mounts(Path("/tmp"), None)


@pytest.mark.parametrize(
    ("exit_code", "stderr", "expected"),
    [
        (0, "", (0, None)),
        (1, "AssertionError", (1, None)),
        (128 + signal.SIGXCPU, "", (None, "cpu time")),
        (128 + signal.SIGKILL, "", (None, "cpu time")),
        (128 + signal.SIGXFSZ, "", (None, "file size")),
        (1, "Traceback (most recent call last):\nMemoryError\n", (1, "memory")),
        (134, "terminate called after throwing an instance of 'std::bad_alloc'", (134, "memory")),
        (1, "BlockingIOError: [Errno 11] Resource temporarily unavailable", (1, "processes")),
        (254, "bash: fork: retry: Resource temporarily unavailable", (254, "processes")),
        (1, "OSError: [Errno 27] File too large", (1, "file size")),
    ],
)
def test_how_a_command_ended_is_read_from_its_exit_code_and_stderr(
    exit_code: int, stderr: str, expected: tuple[int | None, str | None]
) -> None:
    assert classify(exit_code, stderr) == expected
