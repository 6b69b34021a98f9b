"""Structured logging set-up for the CLI and workers."""

from __future__ import annotations

import logging
import os


def configure_logging(level: str | None = None) -> None:
    """Log to stderr at ``FACTORY_LOG_LEVEL`` (default WARNING, so the CLI's output stays clean)."""
    level = (level or os.environ.get("FACTORY_LOG_LEVEL") or "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
