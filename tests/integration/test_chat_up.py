"""``factory up`` serving the chat, through the real console script on the real services: the
refusals (open network without an account, a port in use) come at once, with what to do, and start
no worker; with an account the login form is required; Chainlit's files stay under the data dir and
its page links nothing off this machine; stopping ``factory up`` stops its worker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.cli import FACTORY, factory

pytestmark = pytest.mark.integration

START_S = 90.0  # a start opens the factory and imports Chainlit: seconds, not minutes
HTTP_S = 10.0
REFUSAL_S = 30.0  # a refusal opens the factory (a fresh database is migrated) and nothing more


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def workers_of(prefix: str) -> set[int]:
    """The `factory worker` processes alive now with this test's Redis prefix (read from /proc)."""
    mine = f"FACTORY_REDIS_PREFIX={prefix}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if b"worker" not in args or mine not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if _state(int(entry.name)) not in ("Z", "X"):
                found.add(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _state(pid: int) -> str:
    """The process's state letter (``Z``: a zombie, already ended); ``X`` when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rsplit(")", 1)[1].split()[0]


@dataclass
class Up:
    """A `factory up` started in its own process group, its output in a file."""

    proc: subprocess.Popen[str]
    log: Path
    prefix: str
    workers_seen: set[int] = field(default_factory=set)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def watch(self, until: str | None) -> bool:
        """Wait for ``until`` in the output (True) or for the process to end (False), noting every
        worker of this test's environment seen meanwhile."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            self.workers_seen |= workers_of(self.prefix)
            if until is not None and until in self.output:
                return True
            if self.proc.poll() is not None:
                self.workers_seen |= workers_of(self.prefix)
                return False
            time.sleep(0.05)
        pytest.fail(f"factory up neither served nor exited within {START_S:g}s:\n{self.output[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


Start = Callable[..., Up]


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Start]:
    started: list[Up] = []

    def go(*args: str, cwd: Path | None = None) -> Up:
        log = tmp_path / f"up-{len(started)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(  # its own process group: nothing it starts outlives the test
                [FACTORY, "up", *args], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, cwd=cwd or tmp_path, start_new_session=True,
            )  # fmt: skip
        up = Up(proc, log, env["FACTORY_REDIS_PREFIX"])
        started.append(up)
        return up

    yield go
    for up in started:
        up.stop()
    left = workers_of(env["FACTORY_REDIS_PREFIX"])
    for pid in left:  # a worker left behind is a failure, and is ended
        os.kill(pid, signal.SIGKILL)
    assert not left, f"factory worker(s) {sorted(left)} outlived their `factory up`"


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=HTTP_S) as response:
        return response.status, response.read().decode()


def add_operator(env: dict[str, str]) -> None:
    added = factory("users", "add", "ana", "--role", "operator", env=env, stdin="ana-secret-pw\n", timeout=300)
    assert added.returncode == 0, added.stderr


def test_open_network_without_account_is_refused_at_once_without_a_worker(start: Start, env: dict[str, str]) -> None:
    port = free_port()
    up = start("--host", "0.0.0.0", "--port", str(port))
    began = time.monotonic()
    assert not up.watch(until="chat: http://"), f"it served without a login:\n{up.output}"
    assert up.proc.returncode != 0
    assert time.monotonic() - began < REFUSAL_S, f"the refusal took over {REFUSAL_S:g}s"
    said = up.output
    assert "factory users add NAME --role operator" in said, said
    assert "without a login" in said and "0.0.0.0" in said, said
    assert "Traceback" not in said, said
    assert not listening(port), f"something listens on {port} after the refusal"
    assert not up.workers_seen, f"a factory worker {up.workers_seen} was started for a chat that refused to start"
    assert not workers_of(env["FACTORY_REDIS_PREFIX"])


def test_with_an_account_the_login_form_is_required(start: Start, env: dict[str, str]) -> None:
    add_operator(env)
    port = free_port()
    up = start("--host", "0.0.0.0", "--port", str(port))
    assert up.watch(until="chat: http://"), f"factory up did not serve:\n{up.output}"
    assert "login required" in up.output, up.output
    status, body = get(f"http://127.0.0.1:{port}/auth/config")
    assert status == 200
    assert json.loads(body)["passwordAuth"] is True, body


def test_a_port_in_use_is_refused_naming_it(start: Start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = start("--port", str(port))
        assert not up.watch(until="chat: http://"), up.output
    assert up.proc.returncode != 0
    assert f"127.0.0.1:{port} is in use" in up.output and "--port" in up.output, up.output
    assert "Traceback" not in up.output, up.output
    assert not up.workers_seen, f"a factory worker {up.workers_seen} was started for a chat that refused to start"


_LINK = re.compile(r"""(?:href|src|content)\s*=\s*["']?(https?://[^"'\s>]+)""", re.IGNORECASE)


def test_chainlit_files_live_under_the_data_dir_and_the_page_stays_local(
    start: Start, env: dict[str, str], tmp_path: Path
) -> None:
    stood = tmp_path / "stood"
    stood.mkdir()
    port = free_port()
    up = start("--port", str(port), cwd=stood)
    assert up.watch(until="chat: http://"), f"factory up did not serve:\n{up.output}"
    assert "no login" in up.output, up.output
    status, page = get(f"http://127.0.0.1:{port}/")
    assert status == 200 and "<html" in page.lower(), page[:500]
    for offsite in ("fonts.googleapis", "fonts.gstatic", "cdn.jsdelivr"):
        assert offsite not in page, f"the page links {offsite}"
    links = [url for url in _LINK.findall(page) if not re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", url)]
    assert not links, f"the page links other hosts: {links}"
    assert list(stood.iterdir()) == [], "Chainlit wrote into the directory factory up was started in"
    chat = Path(env["FACTORY_DATA_DIR"]) / "chat"
    assert (chat / ".chainlit" / "config.toml").is_file()
    assert (chat / "chainlit.md").is_file()
    up.stop()
    assert list(stood.iterdir()) == [], "Chainlit wrote into the directory factory up was started in"


def test_stopping_factory_up_stops_its_worker(start: Start, env: dict[str, str]) -> None:
    up = start("--port", str(free_port()))
    assert up.watch(until="chat: http://"), f"factory up did not serve:\n{up.output}"
    found = re.search(r"worker pid (\d+)", up.output)
    assert found, up.output
    worker = int(found.group(1))
    assert worker in workers_of(env["FACTORY_REDIS_PREFIX"]), f"no factory worker with pid {worker}"
    os.kill(up.proc.pid, signal.SIGTERM)  # `factory up` alone, not its group: it must stop the worker itself
    up.proc.wait(30)
    deadline = time.monotonic() + 20
    while _state(worker) not in ("Z", "X") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(worker) in ("Z", "X"), f"the worker (pid {worker}) outlived factory up by 20 s"
    assert "Traceback" not in up.output, up.output


def test_with_json_logs_every_log_line_of_the_chat_and_its_worker_is_json(start: Start, env: dict[str, str]) -> None:
    env.update({"FACTORY_LOG_FORMAT": "json", "FACTORY_LOG_LEVEL": "INFO"})
    port = free_port()
    up = start("--port", str(port))
    assert up.watch(until="chat: http://"), f"factory up did not serve:\n{up.output}"
    assert up.watch(until="worker: drives up to"), f"the worker did not log its start:\n{up.output}"
    assert get(f"http://127.0.0.1:{port}/auth/config")[0] == 200
    up.stop()
    said = [line for line in up.output.splitlines() if line.strip()]
    stdout = ("postgres: ", "chat: http://", "api: http://", "stop with Ctrl-C")
    human = [line for line in said if line.startswith(stdout)]
    logged = [json.loads(line) for line in said if line not in human]  # anything else not JSON fails here
    assert len(human) == 4 and logged, said
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in logged)
    assert any(line["logger"] == "factory.worker" for line in logged), logged


def test_the_rest_api_and_mcp_are_served_beside_the_chat(start: Start, env: dict[str, str]) -> None:
    from tests.integration.api_server import create_token

    token = create_token(env, "dash", "viewer")
    port = free_port()
    up = start("--port", str(port), "--no-worker")
    assert up.watch(until="chat: http://"), f"factory up did not serve:\n{up.output}"
    base = f"http://127.0.0.1:{port}"
    assert f"api: {base}/api/v1" in up.output
    assert get(f"{base}/api/v1/health") == (200, '{"status":"ok"}')
    request = urllib.request.Request(f"{base}/api/v1/teams", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=HTTP_S) as response:
        assert len(json.loads(response.read())) == 17
    try:
        urllib.request.urlopen(f"{base}/api/v1/runs", timeout=HTTP_S)
        raise AssertionError("an unauthenticated request was served")
    except urllib.error.HTTPError as refused:
        assert refused.code == 401 and refused.headers["content-type"] == "application/problem+json"
    try:
        urllib.request.urlopen(urllib.request.Request(f"{base}/mcp", data=b"{}", method="POST"), timeout=HTTP_S)
        raise AssertionError("an unauthenticated MCP request was served")
    except urllib.error.HTTPError as refused:
        assert refused.code == 401  # the MCP server is there too, behind the same tokens
    status, page = get(f"{base}/")
    assert status == 200 and "<html" in page.lower()  # the chat is still served at the root
