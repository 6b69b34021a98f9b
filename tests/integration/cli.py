"""Running the real `factory` console script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

FACTORY = str(Path(sys.executable).with_name("factory"))


def factory(
    *args: str, env: dict[str, str], timeout: float = 600, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FACTORY, *args], env=env, capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )


def run_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data
