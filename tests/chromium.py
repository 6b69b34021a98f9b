"""Debian's chromium for the browser tests: installed with apt-get when missing (as root), else the
test fails saying which package to install. Nothing ever downloads a browser."""

from __future__ import annotations

from tests.debian import ensure_debian

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    return ensure_debian(CHROMIUM, "chromium")
