"""Browser tests: the real chat (`factory up`) on the real services, driven in Debian's chromium.

Nothing downloads a browser: chromium comes from Debian (installed here when missing and this
runs as root; otherwise the test says which package to install). Screenshots are kept under
``.test-artifacts/e2e/`` at the top of the repository (or ``$FACTORY_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.chromium import ensure_chromium
from tests.conftest import REPO
from tests.integration.cli import FACTORY, factory

ARTIFACTS = Path(os.environ.get("FACTORY_TEST_ARTIFACTS", REPO / ".test-artifacts")) / "e2e"
PASSWORDS = {"ana": "ana-secret-pw", "val": "val-secret-pw"}
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")

os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", "/nonexistent")  # never a downloaded browser


LAUNCH = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
FAILED = ARTIFACTS.parent / "playwright"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "env(values): more environment for the `factory up` of the chat fixture")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module, ended with it: a sync Playwright left running for the whole
    session would hold an event loop the later asyncio tests then trip over."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        launched = pw.chromium.launch(executable_path=ensure_chromium(), headless=True, args=LAUNCH)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context and page; every page of a failed test is kept as a screenshot."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        yield context.new_page()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            FAILED.mkdir(parents=True, exist_ok=True)
            pages = [p for opened in browser.contexts for p in opened.pages]
            for n, shown in enumerate(pages):
                shown.screenshot(path=str(FAILED / f"{request.node.name}-{n}.png"), full_page=True)
    finally:
        for opened in browser.contexts:
            opened.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Chat:
    """A running `factory up` (chat and worker) on the test's services."""

    url: str
    env: dict[str, str]
    proc: subprocess.Popen[str]
    log: Path
    shots: Path
    offsite: list[str] = field(default_factory=list)

    def screenshot(self, page: Any, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def guard(self, page: Any) -> Any:
        """Record every request of ``page`` that leaves this machine."""

        def seen(request: Any) -> None:
            parts = urlsplit(request.url)
            if parts.scheme in ("data", "blob", "about"):
                return
            if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                self.offsite.append(request.url)

        page.on("request", seen)
        return page


def add_user(env: dict[str, str], name: str, role: str) -> None:
    proc = factory("users", "add", name, "--role", role, env=env, stdin=PASSWORDS[name] + "\n")
    assert proc.returncode == 0, proc.stderr


def start_chat(env: dict[str, str], tmp_path: Path, shots: Path) -> Chat:
    port = free_port()
    log = tmp_path / "up.log"
    out = log.open("w")
    proc = subprocess.Popen(  # its own process group: the worker it starts is stopped with it
        [FACTORY, "up", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "chat: http://" in log.read_text():
            return Chat(f"http://127.0.0.1:{port}", env, proc, log, shots)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_chat(proc)
    pytest.fail(f"factory up did not serve the chat:\n{log.read_text()[-3000:]}")


def stop_chat(proc: subprocess.Popen[str]) -> None:
    """Stop `factory up` and everything of its process group (also a worker it left behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the rest of the group (a worker) ends within its own timeout
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def accounts(env: dict[str, str]) -> dict[str, str]:
    add_user(env, "ana", "operator")
    add_user(env, "val", "viewer")
    return PASSWORDS


@pytest.fixture
def chat(
    env: dict[str, str],
    accounts: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Chat]:
    # More of the factory's environment (e.g. FACTORY_VERIFY): every env marker, the closest winning.
    extra = {k: v for m in reversed(list(request.node.iter_markers("env"))) for k, v in m.args[0].items()}
    env = {**env, "FACTORY_WORKER_POLL_S": "0.5", **extra}
    marker = request.node.get_closest_marker("script")  # what the scripted model answers (read at start)
    Path(env["FACTORY_SCRIPTED_MODEL"]).write_text(json.dumps(marker.args[0] if marker else {}))
    running = start_chat(env, tmp_path, ARTIFACTS / request.node.name)
    try:
        yield running
    finally:
        stop_chat(running.proc)
    assert not running.offsite, f"the page requested outside this machine: {running.offsite}"


def login(page: Any, chat: Chat, name: str) -> None:
    chat.guard(page)
    page.goto(chat.url + "/login")
    page.fill("#email", name)
    page.fill("#password", PASSWORDS[name])
    page.click("button[type=submit]")
    # The settings button comes with the session's start: only then does a typed message reach it.
    try:
        page.wait_for_selector("#chat-settings-open-modal", timeout=60_000)
    except Exception as exc:
        log = chat.log.read_text()[-4000:]
        raise AssertionError(f"the chat session did not start for {name}; its log:\n{log}") from exc


def send(page: Any, text: str) -> None:
    box = page.locator("#chat-input")
    box.fill(text)
    page.keyboard.press("Enter")


def open_profile(page: Any, name: str) -> None:
    """Switch the chat to the profile ``name`` (confirming the new session) and wait until it started."""
    page.click("#chat-profiles")
    page.get_by_role("option", name=name).click()
    confirm = page.get_by_role("button", name="Confirm")
    if confirm.count():
        confirm.first.click()
    page.wait_for_selector("#chat-settings-open-modal", timeout=30_000)  # the new session started
