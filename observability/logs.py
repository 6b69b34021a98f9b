"""Structured logging set-up for the CLI and workers."""

from __future__ import annotations

import logging

from observability.redact import install_log_redaction


def configure_logging(level: str = "WARNING") -> None:
    """Log to stderr (WARNING by default, so the CLI's output stays clean)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()  # no registered secret (a resolved API key) reaches a log line
