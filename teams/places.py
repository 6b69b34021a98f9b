"""Where run bundles may go: checked before a run is created, so a bad ``--out`` costs no model call."""

from __future__ import annotations

import os
from pathlib import Path

from factory.errors import InputError

# Kernel and device file systems: writing a bundle there is never meant (and /dev/shm is memory).
PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_bundle_root(root: Path, *, fix: str = "give another directory with --out") -> Path:
    """``root`` resolved, created if missing, and checked to be a writable directory of a real file
    system; ``InputError`` (exit 2) naming the problem and ``fix`` otherwise. Bundles go in
    ``root/RUN_ID``."""
    try:
        resolved = root.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise InputError(f"bundle directory {str(root)!r} cannot be resolved ({exc}); {fix}") from exc
    shown = str(resolved)
    for pseudo in PSEUDO_ROOTS:
        if resolved.is_relative_to(pseudo):
            raise InputError(f"bundle directory {shown!r} is under {pseudo}, not a place for files; {fix}")
    if resolved.exists() and not resolved.is_dir():
        raise InputError(f"bundle directory {shown!r} is a file, not a directory; {fix}")
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"bundle directory {shown!r} cannot be created ({exc.strerror or exc}); {fix}") from exc
    if not resolved.is_dir():  # a race with something that put a file there
        raise InputError(f"bundle directory {shown!r} is not a directory; {fix}")
    if not os.access(resolved, os.W_OK | os.X_OK):
        raise InputError(f"bundle directory {shown!r} is not writable; fix its permissions or {fix}")
    return resolved
