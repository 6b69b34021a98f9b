"""The verification gate's cost (issue 19): the sandbox's start-up. Prints JSON.

- Sandbox start-up: ``BubblewrapSandbox.run`` as a check calls it, from the call to its return, for
  ``true`` and for ``python -c pass`` (the interpreter the sandbox may run: this one when its user
  can reach it, else Debian's ``python3``), ``--runs`` times each after ``--warmup`` (the first run
  probes bubblewrap), interleaved so a shared machine's drift hits both alike; beside them the
  same commands started bare (``asyncio.create_subprocess_exec``), for scale. Everything a run
  does is in the figure: the scratch dir handed to the sandbox's uid and back (as root), the
  uid's lock, bubblewrap's namespaces and mounts, prlimit, and the wait until the sandbox's init
  is gone. Goal: median ≤ 50 ms for each.

One function per figure (``sandbox_startup``); ``bench`` puts them together with the goals and
verdicts, so a figure (the time the checks add per stage) joins as one more function and entry.

    python -m bench.verify [--runs 30] [--warmup 3]

Needs Debian's bubblewrap (``apt-get install bubblewrap``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: bench/ would shadow the verify package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.stats import pct  # noqa: E402
from verify.base import SandboxPolicy  # noqa: E402
from verify.sandbox import BubblewrapSandbox, default_sandbox, sandbox_available  # noqa: E402

GOALS: dict[str, float] = {
    "startup_true_median_ms": 50.0,
    "startup_python_median_ms": 50.0,
}
POLICY = SandboxPolicy()  # the shipped defaults


@dataclass
class Options:
    runs: int = 30
    warmup: int = 3

    def check(self) -> None:
        if not (1 <= self.runs <= 10_000 and 0 <= self.warmup <= 1000):
            raise SystemExit("--runs must be 1..10000 and --warmup 0..1000")


def figures(samples_ms: list[float]) -> dict[str, float | int]:
    return {
        "n": len(samples_ms),
        "median_ms": round(statistics.median(samples_ms), 2),
        "p90_ms": round(pct(samples_ms, 0.90), 2),
        "min_ms": round(min(samples_ms), 2),
        "max_ms": round(max(samples_ms), 2),
    }


async def timed_sandbox(sandbox: BubblewrapSandbox, argv: Sequence[str], workdir: Path) -> float:
    started = time.perf_counter()
    run = await sandbox.run(argv, workdir=workdir, policy=POLICY)
    elapsed = (time.perf_counter() - started) * 1000
    if not run.ok:
        raise SystemExit(f"{argv} failed in the sandbox: {run.exit_code} {run.killed} {run.stderr[-500:]}")
    return elapsed


async def timed_bare(argv: Sequence[str]) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.wait_for(proc.wait(), timeout=30)
    return (time.perf_counter() - started) * 1000


async def sandbox_startup(options: Options) -> dict[str, Any]:
    """``true`` and ``python -c pass`` in the sandbox, interleaved, and the same started bare."""
    sandbox = default_sandbox()
    python = sandbox.python()
    commands = {"true": ["true"], "python": [python, "-c", "pass"]}
    samples: dict[str, list[float]] = {f"{kind}_{name}": [] for kind in ("sandbox", "bare") for name in commands}
    workdir = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    try:
        for i in range(options.warmup + options.runs):
            for name, argv in commands.items():
                in_sandbox = await timed_sandbox(sandbox, argv, workdir)
                bare = await timed_bare(argv)
                if i >= options.warmup:
                    samples[f"sandbox_{name}"].append(in_sandbox)
                    samples[f"bare_{name}"].append(bare)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "python": python,
        "as_root": sandbox.as_root,
        "sandbox": {name: figures(samples[f"sandbox_{name}"]) for name in commands},
        "bare": {name: figures(samples[f"bare_{name}"]) for name in commands},
    }


def machine() -> dict[str, Any]:
    bwrap = shutil.which("bwrap")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10) if bwrap else None
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bubblewrap": version.stdout.strip() if version else None,
    }


def verdicts(startup: dict[str, Any]) -> dict[str, bool]:
    return {
        "startup_true_median_ms": startup["sandbox"]["true"]["median_ms"] <= GOALS["startup_true_median_ms"],
        "startup_python_median_ms": startup["sandbox"]["python"]["median_ms"] <= GOALS["startup_python_median_ms"],
    }


async def bench(options: Options) -> dict[str, Any]:
    """Every figure of the benchmark, the goals, and whether each is met."""
    options.check()
    missing = sandbox_available()
    if missing is not None:
        raise SystemExit(missing)
    started = time.perf_counter()
    startup = await sandbox_startup(options)
    return {
        "machine": machine(),
        "options": asdict(options),
        "sandbox_startup": startup,
        "goals": GOALS,
        "pass": verdicts(startup),
        "seconds": round(time.perf_counter() - started, 1),
    }


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    defaults = Options()
    parser.add_argument("--runs", type=int, default=defaults.runs, help="measured runs of each command")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="runs of each command not measured")
    options = Options(**vars(parser.parse_args(argv)))
    try:
        options.check()
    except SystemExit as exc:
        parser.error(str(exc))  # exit 2, with the usage
    return options


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(asyncio.run(bench(parse(argv))), indent=2))


if __name__ == "__main__":
    main()
