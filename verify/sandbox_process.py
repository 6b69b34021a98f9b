"""One started bubblewrap sandbox (see :mod:`verify.sandbox`): its output read as it comes and
capped, its wall time, its kill, the wait until nothing of it is left, and how it ended.

bubblewrap's init (PID 1 in the sandbox) is what holds the sandbox's PID namespace: when it ends,
the kernel kills every process left in the namespace (daemons too) before the init is reported
gone. So a kill is a SIGKILL to that init through a pidfd, and the end of a run is the moment its
pidfd says it has ended, not bubblewrap's exit (bubblewrap returns as soon as the command ends).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from contextlib import suppress
from typing import BinaryIO

from verify.base import SandboxPolicy, SandboxRun

logger = logging.getLogger(__name__)

KILL_GRACE_S = 5.0  # for a killed sandbox's processes to be gone
OUTPUT_KILL_FACTOR = 2  # a stream that goes on past this many caps gets the sandbox killed
_MEMORY = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc")
_PROCESSES = ("Cannot fork", "fork: retry", "Resource temporarily unavailable", "can't start new thread")


def classify(exit_code: int, stderr: str) -> tuple[int | None, str | None]:
    """Which limit stopped a command that ended by itself: (exit code or None if a signal ended it, limit).

    bubblewrap reports a command killed by signal N as exit code 128 + N. The rest is read from the
    end of stderr (a heuristic: what Python, the shells and libc say when a limit bites)."""
    if exit_code == 0:
        return 0, None
    if exit_code == 128 + signal.SIGXCPU:
        return None, "cpu time"
    if exit_code == 128 + signal.SIGKILL:  # the hard CPU limit: the only SIGKILL the limits send
        return None, "cpu time"
    if exit_code == 128 + signal.SIGXFSZ:
        return None, "file size"
    tail = stderr[-4096:]
    if any(mark in tail for mark in _MEMORY):
        return exit_code, "memory"
    if any(mark in tail for mark in _PROCESSES):
        return exit_code, "processes"
    if "File too large" in tail:
        return exit_code, "file size"
    return exit_code, None


def _reap(pid: int) -> None:
    """bubblewrap exits as soon as the command has, before the sandbox's init does: the init, orphaned,
    is reaped by the machine's init, which is this process in a container without one (it has ended:
    the wait does not block)."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class SandboxProcess:
    """One started sandbox: its output read as it comes, its end or its kill, and its cleanup."""

    def __init__(self, proc: asyncio.subprocess.Process, info: BinaryIO, policy: SandboxPolicy) -> None:
        self.proc = proc
        self.policy = policy
        self.started = time.monotonic()
        self.cap = policy.output_kib * 1024
        self.killed: str | None = None
        self.truncated = False
        self.pid1: int | None = None  # the sandbox's init (bubblewrap's child, PID 1 inside)
        self.pidfd: int | None = None
        self.info_pipe = info
        self.info = asyncio.create_task(self._read_info())

    async def finish(self) -> SandboxRun:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, err = bytearray(), bytearray()
        drains = [
            asyncio.create_task(self._drain(self.proc.stdout, out)),
            asyncio.create_task(self._drain(self.proc.stderr, err)),
        ]
        try:
            _, pending = await asyncio.wait(
                [*drains, asyncio.create_task(self.proc.wait())], timeout=self.policy.wall_s
            )
            if pending:
                self.kill("wall time")
        finally:
            await self._end(drains)  # also when cancelled: nothing of the sandbox outlives the run
        duration = time.monotonic() - self.started
        stderr = err.decode(errors="replace")
        exit_code, killed = None, self.killed
        if killed is None and self.proc.returncode is not None:
            exit_code, killed = classify(self.proc.returncode, stderr)
        stdout = out.decode(errors="replace")
        return SandboxRun(exit_code, stdout, stderr, duration, killed=killed, truncated=self.truncated)

    def kill(self, reason: str) -> None:
        """SIGKILL to the sandbox's init: its whole PID namespace goes with it, and bubblewrap, which
        reaps it, exits. Before the init's pid is known, to bubblewrap's process group instead."""
        if self.killed is None:
            self.killed = reason
            logger.debug("sandbox %s killed: %s", self.proc.pid, reason)
        if self.pidfd is not None:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        else:
            self._kill_bubblewrap()

    def _kill_bubblewrap(self) -> None:
        if self.proc.returncode is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def _end(self, drains: list[asyncio.Task[None]]) -> None:
        """Whatever happened: the sandbox's init ended (so its namespace is empty), bubblewrap reaped,
        the output read to its end."""
        if self.proc.returncode is None and self.killed is None:
            self.kill("cancelled")  # run() was cancelled: it ends here
        await self._gone()
        try:
            await asyncio.wait_for(self.proc.wait(), KILL_GRACE_S)
        except TimeoutError:
            logger.error("bubblewrap (pid %s) did not exit after its sandbox: killed", self.proc.pid)
            self._kill_bubblewrap()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), KILL_GRACE_S)
        _, pending = await asyncio.wait(drains, timeout=KILL_GRACE_S)
        for task in pending:
            task.cancel()
        if os.getpid() == 1 and self.pid1 is not None:
            _reap(self.pid1)

    async def _drain(self, stream: asyncio.StreamReader, kept: bytearray) -> None:
        total = 0
        while chunk := await stream.read(65536):
            total += len(chunk)
            kept += chunk[: max(0, self.cap - len(kept))]
            if total > self.cap:
                self.truncated = True
            if total > self.cap * OUTPUT_KILL_FACTOR:
                self.kill("output")

    async def _read_info(self) -> None:
        """bubblewrap's JSON about the sandbox (written at start, then the pipe closes): its init's pid."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), self.info_pipe)
        try:
            data = await reader.read(65536)
            while chunk := await reader.read(65536):
                data += chunk
        finally:
            transport.close()
        with suppress(ValueError, KeyError, TypeError):
            self.pid1 = int(json.loads(data)["child-pid"])
            try:
                self.pidfd = os.pidfd_open(self.pid1)
            except ProcessLookupError:
                return  # already gone
            if self.killed is not None:
                self.kill(self.killed)

    async def _gone(self) -> None:
        """Wait until the sandbox's init has ended: only then is every process of its namespace gone."""
        try:
            await asyncio.wait_for(asyncio.shield(self.info), KILL_GRACE_S)
        except (TimeoutError, OSError):
            self.info.cancel()
        self.info_pipe.close()
        if self.pidfd is None:
            return
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(self.pidfd, readable)
        try:
            await asyncio.wait_for(ended, KILL_GRACE_S)
        except TimeoutError:
            logger.error("the sandbox's init (pidfd %s) did not end within %ss", self.pidfd, KILL_GRACE_S)
        finally:
            loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
