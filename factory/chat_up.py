"""``factory up``'s serving part: a worker process beside the chat, both stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from factory.cli_common import echo, run_async
from factory.settings import Settings

if TYPE_CHECKING:
    from factory.operations import Operations

WORKER_STOP_S = 15.0


def start_worker() -> subprocess.Popen[bytes]:
    """A `factory worker` of this data dir and configuration (it inherits the environment)."""
    return subprocess.Popen([sys.executable, "-m", "factory", "worker"], env=os.environ.copy())


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(WORKER_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_chat(settings: Settings, *, host: str, port: int, worker: bool) -> int:
    """Serve the chat (and a worker) until SIGINT/SIGTERM; the exit code. The worker starts once the
    chat listens, so a start the chat refuses (a port in use, the network without an account) starts
    none and resumes no run."""
    from chat.serve import serve

    started: list[subprocess.Popen[bytes]] = []

    def ready(url: str, login: str) -> None:
        if worker:
            started.append(start_worker())
        echo(f"chat: {url} · {login}" + (f" · worker pid {started[0].pid}" if started else " · no worker"))
        echo(f"api: {url}/api/v1 (OpenAPI {url}/api/v1/openapi.json) · mcp: {url}/mcp · tokens: factory tokens create")
        echo("stop with Ctrl-C; `factory down` stops the embedded services")

    def stopping() -> None:
        for proc in started:
            stop_worker(proc)

    def beside(app: Any, ops: Operations) -> None:  # the REST API under /api and MCP at /mcp, on the chat's services
        from api.serve import mount

        mount(app, ops, settings, host=host)

    try:
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            run_async(serve(settings, host=host, port=port, on_ready=ready, on_stop=stopping, mount=beside))
    finally:
        stopping()  # when serve() ended without a shutdown (which exits the process itself)
    return 0
