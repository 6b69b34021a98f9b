"""Structured logging set-up for the CLI and workers."""

from __future__ import annotations

import logging


def configure_logging(level: str = "WARNING") -> None:
    """Log to stderr (WARNING by default, so the CLI's output stays clean)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
