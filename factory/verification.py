"""Wiring of the verification gate (issue 19): the sandbox, the scratch database and the verifier."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from factory.settings import Settings

if TYPE_CHECKING:
    from teams.verification import Verifier

log = logging.getLogger(__name__)


def verifier(settings: Settings, database_url: str) -> Verifier | None:
    """The verification gate's checker as the settings want it; None when FACTORY_VERIFY is off.

    Without bubblewrap the checks that run code are reported as not run (never run bare); the
    static checks still run. The factory's data folder (its key, its bundles) is hidden from the
    sandbox; the checks' scratch folders live under the system's temporary folder, each bound into
    its own sandbox alone."""
    if not settings.verify:
        return None
    from factory.scratch_pg import PostgresScratchDatabase
    from teams.verification import Verifier
    from verify.sandbox import default_sandbox, sandbox_available

    missing = sandbox_available()
    if missing and settings.sandbox_execute:
        log.warning("checks that run code will be skipped: %s", missing)
    return Verifier(
        # Not under the data folder (hidden from the sandbox, and under a home other users cannot
        # enter): each check's code runs as a user of its own, who must reach its scratch folder.
        Path(tempfile.gettempdir()) / "factory-verify",
        sandbox=None if missing else default_sandbox(hidden=[settings.data_dir]),
        database=PostgresScratchDatabase(database_url),
        execute=settings.sandbox_execute,
        timeout_s=settings.verify_timeout_s,
    )
