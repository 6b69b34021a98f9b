"""Secrets never leave the process: every key the factory resolves is registered here, and every
text that goes to a log, an error, the ledger, the audit or an event passes through ``redact``.

Providers are not trusted with this: some quote the request's ``Authorization`` header or the key in
their error text. Registered values are replaced wherever they appear; so is anything shaped like a
bearer credential, registered or not.
"""

from __future__ import annotations

import json
import logging
import re
import threading

MASK = "[redacted]"
_MIN_LEN = 6  # shorter values would redact ordinary words
_BEARER = re.compile(r"(?i)(bearer\s+|x-api-key[\"':\s=]+|api[_-]?key[\"':\s=]+)([A-Za-z0-9._~+/=-]{8,})")

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember ``value`` as a secret of this process (idempotent; cheap when already known)."""
    global _secrets, _pattern
    if not value or len(value) < _MIN_LEN or value in _secrets:
        return
    # Also as an error message may quote it: escaped (a header library's "b'...\\t...'"), or in JSON.
    forms = {value, value.encode("unicode_escape").decode("ascii"), repr(value.encode("utf-8"))[2:-1]}
    forms.add(json.dumps(value)[1:-1])
    with _lock:
        _secrets = _secrets | {f for f in forms if len(f) >= _MIN_LEN}
        # Longest first, so a key that contains another is masked whole.
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    """``text`` with every registered secret and every bearer-shaped credential masked."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's rendered message (and drops its arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw text, still masked
            message = str(record.msg)
        cleaned = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            cleaned += "\n" + redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = cleaned, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put a ``RedactingFilter`` on every handler of ``logger`` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
