"""`factory groupchat` (issue 17, item 3) through the real console script: a session driven in the
CLI's process printing each team's message labelled and then the summary, `show`/`list` agreeing
with it, bad input refused before anything is stored, `say` and `stop` from another process while
a session is driven, `run --detach` seeding a queued run from the summary, and `resume` after the
driving process was SIGKILLed. Real PostgreSQL and Redis, the scripted model through the routing."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from teams.groupchat import GroupChatOptions, GroupChats, SessionStatus
from tests.conftest import REPO, write_script
from tests.integration.cli import FACTORY, factory
from tests.integration.groupchat_driver import chats_of

pytestmark = pytest.mark.integration

A, B, C = "solution-architecture", "security-engineering", "qa-engineering"
SESSION_ID = re.compile(r"gc-\d{8}-\d{6}-[0-9a-f]{8}")
SUMMARY = {
    "overview": "Ship after the security review.",
    "decisions": ["Ship on Monday, not Friday"],
    "open_questions": ["Who signs off the load test?"],
    "positions": [{"team": A, "argued": "monolith first"}, {"team": B, "argued": "review first"}],
}


@pytest.fixture
def cli(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FACTORY_OPERATOR": "ana"}


class Driving:
    """`factory groupchat …` running in the background, its stdout read line by line as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([FACTORY, "groupchat", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self.errors: list[str] = []
        # One reader per pipe, and nothing else reads them (``communicate`` would take the rest of stdout).
        pipes = ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors))
        self._readers = [threading.Thread(target=self._read, args=pipe, daemon=True) for pipe in pipes]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: Any, into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip("\n"))

    async def session_id(self, timeout_s: float = 60) -> str:
        for _ in range(int(timeout_s / 0.05)):
            for line in self.lines:
                if found := SESSION_ID.search(line):
                    return found.group()
            assert self.proc.poll() is None, "\n".join(self.errors)
            await asyncio.sleep(0.05)
        raise AssertionError("the session id was never printed")

    def finish(self, timeout_s: float = 120) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            self.kill()
        for reader in self._readers:  # the pipes are at their end once the process is gone
            reader.join(timeout=10)
        return self.proc.returncode, "\n".join(self.lines), "\n".join(self.errors)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


async def until(chats: GroupChats, session_id: str, check: Any, timeout_s: float = 90) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if check(await chats.transcript(session_id)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the transcript never got there")


def team_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"^\[[a-z-]+\] ", line)]


def test_a_session_prints_each_message_labelled_then_the_summary_and_show_list_run_agree(
    cli: dict[str, str], pg_url: str
) -> None:
    said = {A: ["Monolith first; split later."], B: ["Not before the security review."], C: ["Load test it first."]}
    write_script(cli, {"embeddings": "hashed", "teams": said, "purposes": {"groupchat_summary": [SUMMARY]}})
    proc = factory("groupchat", "--teams", f"{A},{B},{C}", "--max-messages", "4", "Ship", "on", "Friday?", env=cli)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    session_id = SESSION_ID.search(out).group()  # type: ignore[union-attr]
    lines = team_lines(out)
    assert lines[:3] == [f"[{A}] {said[A][0]}", f"[{B}] {said[B][0]}", f"[{C}] {said[C][0]}"]
    assert len(lines) == 4 and lines[3].startswith(f"[{A}] Scripted reply from {A}")
    assert "[topic, from ana] Ship on Friday?" in out
    assert out.index(lines[-1]) < out.index("Summary") < out.index("  - Ship on Monday, not Friday")
    assert "Open questions:\n  - Who signs off the load test?" in out
    assert f"  - {A}: monolith first" in out
    assert f"group chat {session_id}: ended (max_messages), 4 team messages" in out
    assert f"factory groupchat run {session_id}" in out

    shown = factory("groupchat", "show", session_id, "--json", env=cli)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data["status"], data["stop_reason"], data["created_by"], data["teams"]) == ("ended", "max_messages",
                                                                                        "ana", [A, B, C])  # fmt: skip
    assert [f"[{e['source']}] {e['text']}" for e in data["transcript"] if e["kind"] == "team"] == lines
    assert data["summary"]["decisions"] == SUMMARY["decisions"]
    text = factory("groupchat", "show", session_id, env=cli).stdout
    assert team_lines(text) == lines and "Decisions:\n  - Ship on Monday, not Friday" in text

    listed = factory("groupchat", "list", "--json", env=cli)
    assert listed.returncode == 0, listed.stderr
    assert [(s["id"], s["status"], s["team_messages"]) for s in json.loads(listed.stdout)] == [(session_id, "ended", 4)]
    assert session_id in factory("groupchat", "list", env=cli).stdout
    assert json.loads(factory("groupchat", "list", "--status", "running", "--json", env=cli).stdout) == []

    audited = factory("audit", "search", "Monday", "--json", env=cli)
    assert audited.returncode == 0, audited.stderr
    assert {(h["run_id"], h["kind"]) for h in json.loads(audited.stdout)} >= {(session_id, "groupchat.ended")}
    verified = factory("audit", "verify", session_id, "--json", env=cli)  # the session's own chain, intact
    assert verified.returncode == 0 and json.loads(verified.stdout)["intact"], verified.stdout + verified.stderr
    chain = [json.loads(line) for line in factory("audit", "show", session_id, env=cli).stdout.splitlines()]
    assert [e["kind"] for e in chain][0] == "groupchat.created" and "groupchat.ended" in [e["kind"] for e in chain]
    unknown = factory("audit", "verify", "gc-20260101-000000-00000000", env=cli)
    assert unknown.returncode == 2 and "no group chat" in unknown.stderr

    queued = factory("groupchat", "run", session_id, "--detach", "--json", env=cli)
    assert queued.returncode == 0, queued.stderr
    run = json.loads(queued.stdout)
    assert run["status"] == "running" and run["workers_alive"] == 0
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT requirement FROM runs WHERE id = %s", (run["run_id"],)).fetchone()
    assert row is not None and "Ship on Friday?" in row[0] and "- Ship on Monday, not Friday" in row[0]
    assert json.loads(factory("groupchat", "show", session_id, "--json", env=cli).stdout)["run_ids"] == [run["run_id"]]
    assert f"runs seeded: {run['run_id']}" in factory("groupchat", "show", session_id, env=cli).stdout

    driven = factory("groupchat", "run", session_id, "--pipeline", A, "--json", env=cli)  # here, like `factory run`
    assert driven.returncode == 0, driven.stderr
    assert json.loads(driven.stdout)["status"] == "complete"

    again = factory("groupchat", "--teams", f"{A},{B}", "--max-messages", "2", "--json", "Ship", "now?", env=cli)
    assert again.returncode == 0, again.stderr
    ended = json.loads(again.stdout)  # nothing but the JSON on stdout
    assert ended["status"] == "ended" and [e["kind"] for e in ended["transcript"]] == ["topic", "team", "team"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--teams", f"{A},no-such-team", "Ship?"], "no-such-team"),
        (["--teams", f"{A},{B}", "  "], "the topic is empty"),
        (["--teams", A, "Ship?"], "needs 2 to 8 teams"),
        (["--teams", f"{A},{A}", "Ship?"], "named twice"),
        (["--teams", f"{A},{B}"], "Missing argument"),
        (["--teams", f"{A},{B}", "--max-messages", "0", "Ship?"], "--max-messages"),
        (["list", "--status", "bogus"], "--status must be one of running, ended, failed"),
        (["show", "gc-20260101-000000-deadbeef"], "no group chat"),
        (["say", "gc-20260101-000000-deadbeef", "hello"], "no group chat"),
        (["run", "gc-20260101-000000-deadbeef", "--pipeline", "nope"], "nope"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(cli: dict[str, str], args: list[str], says: str) -> None:
    proc = factory("groupchat", *args, env=cli)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(factory("groupchat", "list", "--json", env=cli).stdout) == []


async def test_say_and_stop_from_another_process_while_a_session_is_driven(cli: dict[str, str]) -> None:
    write_script(cli, {"embeddings": "hashed", "latency_s": 0.4})
    driving = Driving(cli, "--teams", f"{A},{B}", "--max-messages", "200", "Ship on Friday?")
    try:
        session_id = await driving.session_id()
        async with chats_of(cli) as (chats, _):
            await until(chats, session_id, lambda lines: any(e.kind == "team" for e in lines))
            said = factory("groupchat", "say", session_id, "Hold", "on:", "legal", "is", "not", "done.",
                           env={**cli, "FACTORY_OPERATOR": "bo"})  # fmt: skip
            assert said.returncode == 0 and "queued for the next speaker" in said.stdout, said.stderr
            await until(chats, session_id, lambda lines: any(e.kind == "operator" for e in lines)
                        and lines[-1].kind == "team")  # fmt: skip
            stopped = factory("groupchat", "stop", session_id, env=cli)
            assert stopped.returncode == 0 and f"asked group chat {session_id} to stop" in stopped.stdout
            code, out, err = await asyncio.to_thread(driving.finish)
            ended = await chats.get(session_id)
            lines = await chats.transcript(session_id)
    finally:
        driving.kill()
    assert code == 0, err
    operator = next(e for e in lines if e.kind == "operator")
    assert (operator.source, operator.text) == ("bo", "Hold on: legal is not done.")
    assert lines[operator.seq + 1].kind == "team"  # the next speaker heard it
    assert ended.status is SessionStatus.ENDED and ended.stop_reason == "stopped" and ended.stop_requested_by == "ana"
    assert ended.summary is not None and ended.team_messages < 200
    assert "[operator bo] Hold on: legal is not done." in out
    assert out.index("[operator bo]") < out.index(f"[{lines[operator.seq + 1].source}] {lines[operator.seq + 1].text}")
    assert f"group chat {session_id}: ended (stopped)" in out and "Summary" in out
    again = factory("groupchat", "stop", session_id, env=cli)
    assert again.returncode == 2 and "is not running (ended)" in again.stderr
    late = factory("groupchat", "say", session_id, "too late", env=cli)
    assert late.returncode == 2 and "nobody would hear the message" in late.stderr


async def test_resume_after_the_driving_process_was_killed_repeats_no_message(cli: dict[str, str]) -> None:
    write_script(cli, {"embeddings": "hashed", "latency_s": 0.4})
    driving = Driving(cli, "--teams", f"{A},{B},{C}", "--max-messages", "6", "Ship on Friday?")
    try:
        session_id = await driving.session_id()
        async with chats_of(cli) as (chats, _):
            await until(chats, session_id, lambda lines: sum(e.kind == "team" for e in lines) >= 2)
            await asyncio.sleep(0.2)  # inside the next speaker's model call
            driving.kill()
            before = await chats.transcript(session_id)
            assert (await chats.get(session_id)).status is SessionStatus.RUNNING
    finally:
        driving.kill()
    write_script(cli, {"embeddings": "hashed"})
    resumed = factory("groupchat", "resume", session_id, env=cli)
    assert resumed.returncode == 0, resumed.stderr
    async with chats_of(cli) as (chats, _):
        ended = await chats.get(session_id)
        lines = await chats.transcript(session_id)
    assert ended.stop_reason == "max_messages" and ended.team_messages == 6
    assert [e.seq for e in lines] == list(range(len(lines)))
    assert [e.model_dump() for e in lines[: len(before)]] == [e.model_dump() for e in before]
    texts = [e.text for e in lines if e.kind == "team"]
    assert len(set(texts)) == len(texts) == 6
    assert team_lines(resumed.stdout) == [f"[{e.source}] {e.text}" for e in lines if e.kind == "team"]  # each once


class Terminal:
    """`factory groupchat …` with its stdout on a pseudo-terminal (so it streams), read as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        master, replica = pty.openpty()
        self.proc = subprocess.Popen([FACTORY, "groupchat", *args], env=env, stdout=replica, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
        os.close(replica)
        self._fd = master
        self.out = ""
        self.partial = False  # a team's message was seen written in part (its label, no line end yet)

    def read(self, timeout_s: float) -> bool:
        """Read what came within ``timeout_s``; False at the end of the output."""
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return True
        try:
            data = os.read(self._fd, 65536)
        except OSError:  # EIO: the process closed the terminal
            return False
        if not data:
            return False
        self.out += data.decode(errors="replace").replace("\r\n", "\n")
        last = self.out.rsplit("\n", 1)[-1]
        self.partial = self.partial or bool(re.match(rf"^\[({A}|{B})\] \S", last))
        return True

    def read_until(self, check: Any, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while not check() and time.monotonic() < deadline:
            if not self.read(0.05):
                break
        assert check(), self.out

    def finish(self, timeout_s: float = 90) -> tuple[int, str]:
        deadline = time.monotonic() + timeout_s
        while self.read(0.1) and time.monotonic() < deadline:  # to the end of its output
            pass
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read()
        os.close(self._fd)
        return self.proc.wait(timeout=30), stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


async def test_on_a_terminal_messages_stream_in_and_ctrl_c_stops_with_a_summary(cli: dict[str, str]) -> None:
    write_script(cli, {"embeddings": "hashed", "latency_s": 1.0})
    term = Terminal(cli, "--teams", f"{A},{B}", "--max-messages", "50", "Ship on Friday?")
    try:
        term.read_until(lambda: term.out.count("understood.\n") >= 2)
        term.proc.send_signal(signal.SIGINT)
        code, stderr = term.finish()
    finally:
        term.kill()
    assert term.partial  # a message was on screen before it was whole
    assert re.search(r"\n\[[a-z-]+\] Scripted [^\n\[]* … \(cut off\)\n", term.out)  # the cut one, labelled once
    assert "(stop asked by ana: the discussion ends, then the summary is written)" in term.out
    assert code == 0, stderr
    assert "Ctrl-C: the discussion stops, then its summary is written" in stderr
    session_id = SESSION_ID.search(term.out).group()  # type: ignore[union-attr]
    async with chats_of(cli) as (chats, _):
        ended = await chats.get(session_id)
        lines = await chats.transcript(session_id)
    assert ended.stop_reason == "stopped" and ended.stop_requested_by == "ana" and ended.summary is not None
    shown = [line for line in team_lines(term.out) if line.endswith("understood.")]
    assert shown == [f"[{e.source}] {e.text}" for e in lines if e.kind == "team"]  # each whole, once
    assert f"group chat {session_id}: ended (stopped)" in term.out and "Summary" in term.out


async def test_a_second_ctrl_c_leaves_at_once_and_resume_finishes_it(cli: dict[str, str]) -> None:
    write_script(cli, {"embeddings": "hashed", "latency_s": 1.0})
    term = Terminal(cli, "--teams", f"{A},{B}", "--max-messages", "50", "Ship on Friday?")
    try:
        term.read_until(lambda: term.out.count("understood.\n") >= 1)
        term.proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.1)
        term.proc.send_signal(signal.SIGINT)
        code, stderr = term.finish()
    finally:
        term.kill()
    session_id = SESSION_ID.search(term.out).group()  # type: ignore[union-attr]
    assert code == 130 and f"`factory groupchat resume {session_id}` finishes it" in stderr
    async with chats_of(cli) as (chats, _):
        left = await chats.get(session_id)
        assert left.status is SessionStatus.RUNNING and session_id in await chats.orphaned()
    write_script(cli, {"embeddings": "hashed"})
    resumed = factory("groupchat", "resume", session_id, "--json", env=cli)
    assert resumed.returncode == 0, resumed.stderr
    data = json.loads(resumed.stdout)
    assert (data["status"], data["stop_reason"]) == ("ended", "stopped")  # the stop asked first is kept


def drive_elsewhere(env: dict[str, str], session_id: str) -> subprocess.Popen[str]:
    """The session driven by a process of its own (as a worker would)."""
    return subprocess.Popen([sys.executable, "-m", "tests.integration.groupchat_driver", session_id], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


async def test_resume_follows_a_session_another_process_drives(cli: dict[str, str]) -> None:
    write_script(cli, {"embeddings": "hashed", "latency_s": 0.3})
    async with chats_of(cli) as (chats, _):
        session = await chats.open("Ship on Friday?", [A, B], by="ana", options=GroupChatOptions(max_messages=6))
        driver = drive_elsewhere(cli, session.id)
        try:
            await until(chats, session.id, lambda lines: any(e.kind == "team" for e in lines))
            followed = await asyncio.to_thread(factory, "groupchat", "resume", session.id, env=cli, timeout=120)
            out, err = await asyncio.to_thread(driver.communicate, timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=30)
        assert driver.returncode == 0 and out.strip() == "max_messages", err
        lines = await chats.transcript(session.id)
    assert followed.returncode == 0, followed.stderr
    assert f"group chat {session.id} is driven by another process: following it" in followed.stderr
    assert team_lines(followed.stdout) == [f"[{e.source}] {e.text}" for e in lines if e.kind == "team"]  # each once
    assert f"group chat {session.id}: ended (max_messages), 6 team messages" in followed.stdout
