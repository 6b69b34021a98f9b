"""Fixtures for `factory` subprocesses on the real services with the scripted model (`env` and
`write_script` live in tests/conftest.py, shared with the browser tests)."""

from __future__ import annotations

from tests.conftest import write_script  # noqa: F401  (tests import it from here)
from tests.integration.pgbouncer import pgbouncer  # noqa: F401  (a fixture for the tests here)
