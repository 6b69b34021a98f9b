"""llama.cpp's own log lines go to Python logging (logger ``llama_cpp``, DEBUG), not straight to stderr.

Left alone, llama.cpp prints to the process's stderr from C (even with ``verbose=False``: e.g. the
vocabulary-only tokenizer's "n_ctx_seq (512) > n_ctx_train (0)" at ERROR level), which breaks JSON
log lines and alarms operators over nothing. Its failures that matter surface as exceptions anyway.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

log = logging.getLogger("llama_cpp")
_lock = threading.Lock()
_callback: Any = None  # kept referenced: llama.cpp holds only a C pointer to it


def route_llama_logs() -> None:
    """Install the callback (once per process; idempotent)."""
    global _callback
    with _lock:
        if _callback is not None:
            return
        import llama_cpp

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", "replace").rstrip()
            if line:
                log.debug("%s", line)

        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        _callback = callback
