"""Debian packages the tests need (chromium, pgbouncer, bubblewrap): installed with apt-get when
missing and this runs as root, else the test fails saying which package to install. Nothing is ever
downloaded from anywhere but Debian's archive."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# Debian installs some programs off a non-root PATH (pgbouncer in /usr/sbin).
SEARCH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UPDATE_TIMEOUT_S = 600.0
INSTALL_TIMEOUT_S = 1200.0


def find_binary(binary: str) -> str | None:
    """``binary`` (a name, or an absolute path) if it is an executable here, on PATH or in Debian's places."""
    if os.path.isabs(binary):
        return binary if os.access(binary, os.X_OK) else None
    return shutil.which(binary) or shutil.which(binary, path=SEARCH)


def install_debian(package: str) -> None:
    """``apt-get update`` then ``apt-get install package`` when root and apt-get are here (else nothing)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=UPDATE_TIMEOUT_S)
    install = ["apt-get", "install", "-y", "-qq", package]
    subprocess.run(install, env=env, check=False, capture_output=True, timeout=INSTALL_TIMEOUT_S)


def find_or_install(binary: str, package: str) -> str | None:
    """``binary``'s path, installing Debian's ``package`` first when it is missing; None if it stays missing."""
    found = find_binary(binary)
    if found is None:
        install_debian(package)
        found = find_binary(binary)
    return found


def ensure_debian(binary: str, package: str) -> str:
    """``binary``'s path, installed from Debian's ``package`` when missing (as root); else the test fails."""
    found = find_or_install(binary, package)
    if found is None:
        pytest.fail(f"this test needs {binary} from Debian's `{package}` package: apt-get install {package}")
    return found
