"""The sandbox of produced code (issue 19) on the real bubblewrap: ordinary code runs and writes in its
scratch directory; every escape below is stopped, reported, and leaves this test process (and the
machine) as they were — nothing of the sandbox outlives ``run``.

bubblewrap comes from Debian (installed here when missing, as root)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.debian import ensure_debian
from verify.base import SandboxPolicy, SandboxRun
from verify.sandbox import BubblewrapSandbox, ExecutionRefused, default_sandbox, sandbox_available

REPO = Path(__file__).resolve().parents[2]
TEST_UIDS = range(264_000, 265_000)
POLICY = SandboxPolicy(cpu_s=5, memory_mb=256, max_procs=16, output_kib=64, wall_s=20.0)


@pytest.fixture(scope="module")
def bwrap() -> str:
    return ensure_debian("bwrap", "bubblewrap")


@pytest.fixture
def secrets() -> Iterator[tuple[Path, Path]]:
    """A data directory (with a key) and a configuration file, readable by anyone, outside every
    path the sandbox hides by default: only ``hidden`` keeps them out of sight."""
    for base in (Path("/var/lib"), Path("/srv"), Path("/opt"), REPO):
        if os.access(base, os.W_OK):
            break
    root = Path(tempfile.mkdtemp(prefix="factory-sandbox-test-", dir=base))
    try:
        root.chmod(0o755)
        data = root / "data"
        data.mkdir(mode=0o755)
        (data / "secret.key").write_text("the-secret-key")
        config = root / "factory.toml"
        config.write_text('secret_key = "the-config-secret"\n')
        for path in (data / "secret.key", config):
            path.chmod(0o644)
        yield data, config
    finally:
        shutil.rmtree(root)


@pytest.fixture
def sandbox(bwrap: str, secrets: tuple[Path, Path]) -> BubblewrapSandbox:
    sandbox = default_sandbox(hidden=list(secrets))
    sandbox.uids = TEST_UIDS  # no other sandbox of this machine runs as these: what runs as them is ours
    return sandbox


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory the sandbox's user may reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="factory-sandbox-work-"))
    yield path
    shutil.rmtree(path)


async def run_python(
    sandbox: BubblewrapSandbox, workdir: Path, code: str, policy: SandboxPolicy = POLICY
) -> SandboxRun:
    script = workdir / f"script_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent(code))
    return await sandbox.run([sandbox.python(), script.name], workdir=workdir, policy=policy)


def processes_with(marker: str) -> list[str]:
    """Processes of this machine whose command line holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and pid != str(os.getpid()):
            found.append(pid)
    return found


def live_processes_of(uid: int) -> list[str]:
    """Processes running as ``uid`` (zombies aside: they have ended; the machine's init reaps them)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(pid)
    return found


def owners(root: Path) -> set[int]:
    return {p.lstat().st_uid for p in [root, *root.rglob("*")]}


def host_forks() -> bool:
    return subprocess.run(["true"], timeout=10).returncode == 0


def attempts(run: SandboxRun) -> dict[str, str]:
    """What the sandboxed script reported for each attempt (``"ok"`` or the error)."""
    assert run.ok, (run.exit_code, run.killed, run.stderr)
    result: dict[str, str] = json.loads(run.stdout)
    return result


ATTEMPT = """
import json, os, socket, sys
results = {}
def attempt(name, action):
    try:
        action()
        results[name] = "ok"
    except Exception as exc:
        results[name] = f"{type(exc).__name__}: {exc}"
"""


def attempting(code: str) -> str:
    """A script that reports each ``attempt(name, action)`` of ``code``: ``"ok"`` or the error."""
    return ATTEMPT + textwrap.dedent(code)


async def test_the_sandbox_is_available_here(bwrap: str) -> None:
    assert sandbox_available() is None


async def test_a_python_script_runs_and_writes_in_its_scratch_dir(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    (workdir / "data.txt").write_text("input from the check")
    (workdir / "pkg").mkdir()
    run = await run_python(
        sandbox,
        workdir,
        """
        import os, pathlib
        text = pathlib.Path("data.txt").read_text()
        pathlib.Path("pkg/out.txt").write_text(text.upper())
        pathlib.Path(os.environ["TMPDIR"], "tmp.txt").write_text("temp")
        print("cwd", os.getcwd(), "home", os.environ["HOME"])
        """,
    )
    assert run.ok and run.killed is None and not run.truncated, run.stderr
    assert run.stdout.strip() == f"cwd {workdir} home {workdir}"
    assert (workdir / "pkg" / "out.txt").read_text() == "INPUT FROM THE CHECK"
    assert (workdir / "tmp.txt").read_text() == "temp"
    # handed back to its owner: the caller reads, changes and removes what the sandbox wrote
    assert owners(workdir) == {os.stat(workdir).st_uid}


async def test_the_network_is_cut_loopback_public_addresses_and_dns(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    run = await run_python(
        sandbox,
        workdir,
        attempting(
            """
        attempt("redis", lambda: socket.create_connection(("127.0.0.1", 6379), timeout=3).close())
        attempt("loopback6", lambda: socket.create_connection(("::1", 6379), timeout=3).close())
        attempt("public", lambda: socket.create_connection(("1.1.1.1", 443), timeout=3).close())
        attempt("public_udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
        attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
        print(json.dumps(results))
        """
        ),
    )
    results = attempts(run)
    assert set(results) == {"redis", "loopback6", "public", "public_udp", "dns"}
    assert all(outcome != "ok" for outcome in results.values()), results


async def test_writes_outside_the_scratch_dir_fail(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    name = f"sandbox-escape-{uuid.uuid4().hex[:8]}"
    targets = {
        "etc": Path("/etc") / name,
        "repo": REPO / name,
        "host_tmp": Path(tempfile.gettempdir()) / name,
        "home": Path.home() / name,
        "var_tmp": Path("/var/tmp") / name,
        "dev": Path("/dev") / name,
        "parent": workdir.parent / name,
    }
    checks = "".join(
        f"attempt({key!r}, lambda: open({str(path)!r}, 'w').write('x'))\n" for key, path in targets.items()
    )
    run = await run_python(sandbox, workdir, attempting(checks + "print(json.dumps(results))\n"))
    results = attempts(run)
    assert set(results) == set(targets)
    assert all(outcome != "ok" for outcome in results.values()), results
    assert not [path for path in targets.values() if path.exists()]


async def test_hidden_paths_are_empty_inside(
    sandbox: BubblewrapSandbox, workdir: Path, secrets: tuple[Path, Path], bwrap: str
) -> None:
    data, config = secrets
    code = attempting(
        f"""
        attempt("key", lambda: print(open({str(data / "secret.key")!r}).read(), end=""))
        attempt("config", lambda: print(open({str(config)!r}).read(), end=""))
        results["data_listing"] = sorted(os.listdir({str(data)!r}))
        results["root_listing"] = sorted(os.listdir("/root")) if os.path.isdir("/root") else []
        results["run_listing"] = sorted(os.listdir("/run"))
        results["home_listing"] = sorted(os.listdir({str(Path.home())!r}))
        sys.stdout.flush()
        print(json.dumps(results), file=sys.stderr)
        """
    )
    run = await run_python(sandbox, workdir, code)
    assert run.ok, run.stderr
    results = json.loads(run.stderr)
    assert "the-secret-key" not in run.stdout and "the-config-secret" not in run.stdout
    assert results["key"].startswith("FileNotFoundError")
    assert results["config"].startswith("PermissionError") and run.stdout == ""
    assert results["data_listing"] == results["root_listing"] == results["run_listing"] == []
    assert results["home_listing"] == []
    # what makes the test mean something: without `hidden` the same sandbox user reads them
    plain = await run_python(BubblewrapSandbox(), workdir, code)
    assert "the-secret-key" in plain.stdout and "the-config-secret" in plain.stdout


async def test_the_hosts_environment_is_not_visible(
    sandbox: BubblewrapSandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACTORY_TEST_SECRET", "xyz")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-sandbox")
    run = await sandbox.run(["env"], workdir=workdir, policy=POLICY, env={"GIVEN": "by-the-check"})
    assert run.ok, run.stderr
    seen = dict(line.split("=", 1) for line in run.stdout.splitlines())
    assert "FACTORY_TEST_SECRET" not in seen and "OPENAI_API_KEY" not in seen
    assert "xyz" not in run.stdout and "sk-test" not in run.stdout
    assert seen["GIVEN"] == "by-the-check" and seen["HOME"] == str(workdir)
    assert set(seen) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PWD", "GIVEN"}


async def test_a_fork_bomb_is_bounded_and_the_host_forks_afterwards(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex[:8]}"
    code = """
        import os, time
        print(os.getuid(), flush=True)
        children = 0
        try:
            while children < 10_000:
                if os.fork() == 0:
                    time.sleep(120)
                    os._exit(0)
                children += 1
        finally:
            print(children, flush=True)
    """
    script = workdir / "bomb.py"
    script.write_text(textwrap.dedent(code))
    run = await sandbox.run([sandbox.python(), script.name, marker], workdir=workdir, policy=POLICY)
    assert run.killed == "processes", (run.exit_code, run.stderr)
    uid, children = map(int, run.stdout.split())
    assert 0 < children < POLICY.max_procs
    assert processes_with(marker) == []  # every child went with the sandbox
    if os.geteuid() == 0:
        assert uid in TEST_UIDS and live_processes_of(uid) == []
    assert host_forks()


async def test_allocating_without_bound_stops_at_the_memory_limit(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    run = await run_python(
        sandbox,
        workdir,
        """
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))
        """,
    )
    assert run.killed == "memory" and not run.ok
    assert "MemoryError" in run.stderr


async def test_an_endless_loop_stops_at_the_cpu_limit(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    policy = SandboxPolicy(cpu_s=1, memory_mb=256, max_procs=16, output_kib=64, wall_s=30.0)
    run = await run_python(sandbox, workdir, "while True:\n    pass\n", policy)
    assert run.killed == "cpu time" and run.exit_code is None
    assert run.duration_s < 20


async def test_a_sleeper_is_killed_at_the_wall_time(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    marker = f"{1000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}"
    policy = SandboxPolicy(cpu_s=5, memory_mb=256, max_procs=16, output_kib=64, wall_s=1.0)
    run = await sandbox.run(["sleep", marker], workdir=workdir, policy=policy)
    assert run.killed == "wall time" and run.exit_code is None
    assert 1.0 <= run.duration_s < 10
    assert processes_with(f"sleep\0{marker}") == []


async def test_endless_output_is_truncated_and_killed(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    for argv in (["yes"], ["sh", "-c", "yes >&2"]):
        run = await sandbox.run(argv, workdir=workdir, policy=POLICY)
        assert run.killed == "output" and run.truncated and run.exit_code is None, argv
        cap = POLICY.output_kib * 1024
        assert len(run.stdout) <= cap and len(run.stderr) <= cap
        assert (run.stdout or run.stderr).startswith("y\ny\n")


async def test_output_a_little_past_the_cap_is_truncated_but_the_command_ends(
    sandbox: BubblewrapSandbox, workdir: Path
) -> None:
    cap = POLICY.output_kib * 1024
    run = await run_python(sandbox, workdir, f"print('x' * {cap + 1000})\n")
    assert run.exit_code == 0 and run.killed is None and run.truncated
    assert run.stdout == "x" * cap


async def test_a_file_bigger_than_the_limit_cannot_be_written(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    run = await run_python(sandbox, workdir, f"open('big', 'wb').write(b'x' * {POLICY.output_kib * 1024 * 4})\n")
    assert run.killed == "file size" and not run.ok
    assert (workdir / "big").stat().st_size <= POLICY.output_kib * 1024


@pytest.mark.parametrize("then", ["exits", "hangs"])
async def test_a_daemon_does_not_outlive_the_run(sandbox: BubblewrapSandbox, workdir: Path, then: str) -> None:
    marker = f"daemon-{uuid.uuid4().hex[:8]}"
    code = f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "300", {marker!r}])
            os._exit(0)
        time.sleep(0.5)
        print("parent done", os.getuid(), flush=True)
        if {then == "hangs"}:
            time.sleep(300)
    """
    policy = SandboxPolicy(cpu_s=5, memory_mb=256, max_procs=16, output_kib=64, wall_s=3.0)
    run = await run_python(sandbox, workdir, code, policy)
    assert run.stdout.startswith("parent done"), run.stderr
    assert run.killed == (None if then == "exits" else "wall time")
    assert processes_with(marker) == []
    if os.geteuid() == 0:
        assert live_processes_of(int(run.stdout.split()[-1])) == []


async def test_concurrent_sandboxes_run_as_different_users(sandbox: BubblewrapSandbox, bwrap: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the per-execution users are root's: not as root, every sandbox runs as the current user")
    dirs = [Path(tempfile.mkdtemp(prefix="factory-sandbox-work-")) for _ in range(3)]
    try:
        runs = await asyncio.gather(
            *(sandbox.run(["sh", "-c", "id -u; sleep 0.5"], workdir=d, policy=POLICY) for d in dirs)
        )
    finally:
        for d in dirs:
            shutil.rmtree(d)
    uids = {int(r.stdout) for r in runs}
    assert len(uids) == 3 and all(200_000 <= u < 265_000 for u in uids)


async def test_nothing_runs_when_the_policy_forbids_execution(sandbox: BubblewrapSandbox, workdir: Path) -> None:
    with pytest.raises(ExecutionRefused):
        await sandbox.run(["touch", "ran"], workdir=workdir, policy=SandboxPolicy(execute=False))
    assert not (workdir / "ran").exists()


async def test_a_cancelled_run_leaves_nothing_running_and_hands_the_workdir_back(
    sandbox: BubblewrapSandbox, workdir: Path
) -> None:
    marker = f"{2000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}"
    task = asyncio.create_task(sandbox.run(["sh", "-c", f"touch made; sleep {marker}"], workdir=workdir, policy=POLICY))
    for _ in range(100):  # until the sandbox has started its command
        if processes_with(f"sleep\0{marker}"):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_with(f"sleep\0{marker}") == []
    assert owners(workdir) == {os.getuid()}
