"""The LiteLLM proxy's own virtual environment, for proxy mode's test: made from its own lock.

``litellm[proxy]`` cannot share the app's environment (its extra needs ``mcp>=2.2``, chainlit
``mcp<2``), so the test set-up installs it in ``.venv-proxy/`` beside the app's ``.venv``, with the
app's own ``uv`` and the same package index the Makefile uses. The environment is reused while it
was made from the same lock (a stamp holds the lock's hash) and remade when the lock changes; a file
lock keeps two test processes from building it at once. A build takes about 25 s here, most of it
compiling bytecode: done at install, so that each start of the proxy does not pay it (about 12 s
instead of about a minute on two cores).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-proxy.lock"
VENV = ROOT / ".venv-proxy"
STAMP = VENV / ".installed"
INSTALL_TIMEOUT_S = 900.0  # a cold cache downloads ~150 MB of wheels


class ProxyEnvError(RuntimeError):
    """The proxy's environment could not be made; the message says which step failed and its output."""


def _lock_digest() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def _uv() -> str:
    uv = Path(sys.executable).with_name("uv")
    if not uv.is_file():
        raise ProxyEnvError(f"{uv} is missing: run `make install` (it installs uv into the app's .venv)")
    return str(uv)


def _run(args: list[str], *, deadline: float) -> None:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}  # never fetch an interpreter: use this machine's
    try:
        proc = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()), check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProxyEnvError(f"`{' '.join(args)}` took longer than {INSTALL_TIMEOUT_S:g}s") from exc
    if proc.returncode != 0:
        raise ProxyEnvError(f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def litellm_bin() -> Path:
    """The proxy's ``litellm`` executable, installing its environment first if it is missing or stale."""
    digest = _lock_digest()
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".venv-proxy.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another test process may be building it right now
        if not (STAMP.is_file() and STAMP.read_text().strip() == digest):
            _build(digest)
    binary = VENV / "bin" / "litellm"
    if not binary.is_file():
        raise ProxyEnvError(f"{binary} is missing after the install: remove {VENV} and run the test again")
    return binary


def _build(digest: str) -> None:
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    uv = _uv()
    shutil.rmtree(VENV, ignore_errors=True)  # a half-built or stale environment is remade whole
    base = getattr(sys, "_base_executable", sys.executable)
    _run([uv, "venv", "--quiet", "--python", base, str(VENV)], deadline=deadline)
    _run(
        [uv, "pip", "sync", "--quiet", "--compile-bytecode", "--python", str(VENV / "bin" / "python"), str(LOCK)],
        deadline=deadline,
    )
    STAMP.write_text(digest + "\n")


if __name__ == "__main__":  # `python -m tests.proxy_env`: build (or check) it by hand
    started = time.monotonic()
    path = litellm_bin()
    print(f"{path} ready in {time.monotonic() - started:.1f}s")  # noqa: T201
