"""Mermaid's parser for the tests of the mermaid check: ``verify/mermaid/node_modules`` installed with
``npm ci`` from its lock when missing or older than the lock, as ``make install`` does. Node.js and npm
come from Debian (installed with apt-get when missing and this runs as root); without them the test
fails saying what to install. Nothing is fetched but the lock's packages from npm's registry."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.debian import find_or_install

MERMAID = Path(__file__).resolve().parent.parent / "verify" / "mermaid"
NPM_CI_TIMEOUT_S = 900.0


def installed(modules: Path, lock: Path) -> bool:
    """Whether ``npm ci`` left a tree at least as new as the lock."""
    return modules.is_dir() and modules.stat().st_mtime >= lock.stat().st_mtime


def ensure_mermaid() -> str:
    """Node.js's path, with Mermaid's parser installed beside ``verify/mermaid/check.mjs``; else the test fails."""
    node = find_or_install("node", "nodejs")
    npm = find_or_install("npm", "npm")
    if node is None or npm is None:
        pytest.fail("the mermaid check's tests need Node.js and npm: apt-get install nodejs npm, then make install")
    modules, lock = MERMAID / "node_modules", MERMAID / "package-lock.json"
    # One install at a time, whichever test process (or engineer) gets here first.
    key = hashlib.sha256(str(MERMAID).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"factory-mermaid-{key}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not installed(modules, lock):
            argv = [npm, "ci", "--prefix", str(MERMAID), "--no-audit", "--no-fund", "--ignore-scripts"]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                pytest.fail(f"npm ci --prefix {MERMAID} did not finish in {NPM_CI_TIMEOUT_S:g} s; run make install")
            if done.returncode != 0 or not installed(modules, lock):
                pytest.fail(f"npm ci --prefix {MERMAID} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return node
