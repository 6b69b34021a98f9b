"""The verification gate's cost (issue 19): the sandbox's start-up and the time the checks add per
stage. Prints JSON.

- Sandbox start-up: ``BubblewrapSandbox.run`` as a check calls it, from the call to its return, for
  ``true`` and for ``python -c pass`` (the interpreter the sandbox may run: this one when its user
  can reach it, else Debian's ``python3``), ``--runs`` times each after ``--warmup`` (the first run
  probes bubblewrap), interleaved so a shared machine's drift hits both alike; beside them the
  same commands started bare (``asyncio.create_subprocess_exec``), for scale. Everything a run
  does is in the figure: the scratch dir handed to the sandbox's uid and back (as root), the
  uid's lock, bubblewrap's namespaces and mounts, prlimit, and the wait until the sandbox's init
  is gone. Goal: median ≤ 50 ms for each.
- Checks per stage: ``Verifier.verify`` end to end for each checked stage of the correct delivery
  (``tests/data/delivery``, read by path) — api-design, database-engineering, backend-engineering,
  qa-engineering, each with the earlier files it reads as in the pipeline (QA's tests run against
  the backend's code): its workspace written, every check of the team, their sandbox start-ups, the
  SQL applied to a scratch schema. The scratch schemas live in a database and as a role of the
  bench's own (``bench_verify_<pid>``) on the machine's PostgreSQL, both dropped afterwards; the
  verifier is wired as ``factory.verification.verifier`` wires it. ``--stage-runs`` times each stage
  after ``--stage-warmup`` rounds, the four interleaved; every check must pass (a bench over failing
  checks measures nothing). Per team: median and p90 seconds and each check's median
  (``CheckReport.duration_s``; checks run two at a time, so they overlap). Goal: each team's median
  ≤ 2 s.

One function per figure (``sandbox_startup``, ``stage_checks``); ``bench`` puts them together with
the goals and verdicts, so a figure joins as one more function and entry.

    python -m bench.verify [--runs 30] [--warmup 3] [--stage-runs 10] [--stage-warmup 1]
                           [--database-url postgresql://root@127.0.0.1:5432/postgres]

Needs Debian's bubblewrap (``apt-get install bubblewrap``) and a PostgreSQL whose user may create
databases and roles.
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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

if __name__ == "__main__" and not __package__:  # run as a file: bench/ would shadow the verify package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from bench.stats import pct  # noqa: E402
from factory.scratch_pg import PostgresScratchDatabase  # noqa: E402
from factory.settings import Settings  # noqa: E402
from teams.base import Run, StageRecord  # noqa: E402
from teams.results import Artifact, TaskResult, TaskStatus  # noqa: E402
from teams.roster import team  # noqa: E402
from teams.runner import PriorArtifact  # noqa: E402
from teams.slugs import TeamSlug  # noqa: E402
from teams.verification import Verification, Verifier  # noqa: E402
from verify.base import Outcome, SandboxPolicy  # noqa: E402
from verify.sandbox import BubblewrapSandbox, default_sandbox, sandbox_available  # noqa: E402

GOALS: dict[str, float] = {
    "startup_true_median_ms": 50.0,
    "startup_python_median_ms": 50.0,
    "stage_checks_median_s": 2.0,
}
POLICY = SandboxPolicy()  # the shipped defaults
DELIVERY = Path(__file__).resolve().parents[1] / "tests" / "data" / "delivery"
#: The correct delivery of the integration tests: file in the bundle → its file under DELIVERY.
DELIVERY_FILES = {
    "api/openapi.yaml": "openapi.yaml",
    "database/schema.sql": "schema.sql",
    "backend/app.py": "app.py",
    "qa/test_app.py": "test_app.py",
}
PIPELINE: list[TeamSlug] = ["api-design", "database-engineering", "backend-engineering", "qa-engineering"]


@dataclass
class Options:
    runs: int = 30
    warmup: int = 3
    stage_runs: int = 10
    stage_warmup: int = 1
    database_url: str = "postgresql://root@127.0.0.1:5432/postgres"

    def check(self) -> None:
        if not (1 <= self.runs <= 10_000 and 0 <= self.warmup <= 1000):
            raise SystemExit("--runs must be 1..10000 and --warmup 0..1000")
        if not (1 <= self.stage_runs <= 1000 and 0 <= self.stage_warmup <= 100):
            raise SystemExit("--stage-runs must be 1..1000 and --stage-warmup 0..100")
        if urlsplit(self.database_url).scheme not in ("postgresql", "postgres"):
            raise SystemExit("--database-url must be a postgresql:// URL (a user who may create databases and roles)")


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


def delivery_result(slug: str) -> TaskResult:
    """A COMPLETE result of ``slug`` with its pinned deliverables: the correct delivery's file where
    there is one, else a short markdown note (as the integration tests build it)."""
    missing = [f for f in DELIVERY_FILES.values() if not (DELIVERY / f).is_file()]
    if missing:
        raise SystemExit(f"the correct delivery is incomplete: {', '.join(missing)} missing under {DELIVERY}")
    artifacts = [
        Artifact(
            name=d.name,
            kind=d.kind,  # type: ignore[arg-type]  # the roster's kinds are validated when it loads
            content=(DELIVERY / DELIVERY_FILES[d.name]).read_text(encoding="utf-8")
            if d.name in DELIVERY_FILES
            else f"# {d.name}\n\n{d.description}\n",
        )
        for d in team(slug).produces
    ]
    return TaskResult(status=TaskStatus.COMPLETE, reasoning=f"{slug} delivers.", artifacts=artifacts, confidence=0.9)


@asynccontextmanager
async def scratch_postgres(admin_url: str) -> AsyncIterator[PostgresScratchDatabase]:
    """The ``sql-apply`` check's scratch database, in a database and as a role of this process's own
    (``bench_verify_<pid>``) on ``admin_url``'s server, both dropped afterwards."""
    name = f"bench_verify_{os.getpid()}"
    drop_database = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    drop_role = sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name))
    try:
        admin = await psycopg.AsyncConnection.connect(admin_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"cannot reach PostgreSQL at --database-url: {exc}".strip()) from exc
    async with admin:
        await admin.execute(drop_database)  # a leftover of a killed run with the same pid
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield PostgresScratchDatabase(urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}")), role=name)
        finally:
            await admin.execute(drop_database)
            await admin.execute(drop_role)


def stage_verifier(scratch_root: Path, database: PostgresScratchDatabase) -> Verifier:
    """The verifier as ``factory.verification.verifier`` wires it with the default settings (the
    sandbox hiding the data folder, code running, the shipped check timeout), over the bench's
    scratch folder and database."""
    fields = Settings.model_fields
    data_dir = fields["data_dir"].get_default(call_default_factory=True)
    sandbox = default_sandbox(hidden=[data_dir])
    return Verifier(scratch_root, sandbox=sandbox, database=database, timeout_s=fields["verify_timeout_s"].default)


def scratch_folder() -> Path:
    """A folder of the bench's own for the workspaces, which each check's sandbox user passes through."""
    base = Path(tempfile.mkdtemp(prefix="bench-verify-stages-"))
    base.chmod(0o711)
    return base


def passed_or_exit(slug: str, verification: Verification | None) -> Verification:
    """``verification`` when every check passed; else the bench stops, saying which did not."""
    if verification is None:
        raise SystemExit(f"{slug}: the verifier ran no check on the correct delivery")
    bad = [r for r in verification.reports if r.outcome is not Outcome.PASSED]
    if bad:
        said = "; ".join(
            f"{r.check} {r.outcome.value}: {r.detail or ' / '.join(f.message for f in r.findings[:3])}"[:600]
            for r in bad
        )
        raise SystemExit(f"{slug}: checks did not pass on the correct delivery, nothing measured: {said}")
    return verification


def seconds(samples_s: list[float]) -> dict[str, float | int]:
    return {
        "n": len(samples_s),
        "median_s": round(statistics.median(samples_s), 3),
        "p90_s": round(pct(samples_s, 0.90), 3),
        "min_s": round(min(samples_s), 3),
        "max_s": round(max(samples_s), 3),
    }


async def stage_checks(options: Options) -> dict[str, Any]:
    """``Verifier.verify`` for each checked stage of the correct delivery, the stages interleaved."""
    results = {slug: delivery_result(slug) for slug in PIPELINE}
    prior: list[PriorArtifact] = []
    contexts: dict[str, list[PriorArtifact]] = {}
    for slug in PIPELINE:  # each team reads the earlier files of the teams it reads, as in the pipeline
        contexts[slug] = [p for p in prior if p.team in team(slug).reads]
        prior.extend(PriorArtifact(slug, a) for a in results[slug].artifacts)
    totals: dict[str, list[float]] = {slug: [] for slug in PIPELINE}
    per_check: dict[str, dict[str, list[float]]] = {slug: {} for slug in PIPELINE}
    base = scratch_folder()
    try:
        run = Run.new("Build a link shortener service with an HTTP API.", list(PIPELINE), "bench", base / "runs")
        stages = {slug: StageRecord(run_id=run.id, index=i, team=slug) for i, slug in enumerate(PIPELINE)}
        async with scratch_postgres(options.database_url) as database:
            verifier = stage_verifier(base / "scratch", database)
            for i in range(options.stage_warmup + options.stage_runs):
                for slug in PIPELINE:
                    started = time.perf_counter()
                    verification = await verifier.verify(run, stages[slug], team(slug), results[slug], contexts[slug])
                    elapsed = time.perf_counter() - started
                    verification = passed_or_exit(slug, verification)
                    if i >= options.stage_warmup:
                        totals[slug].append(elapsed)
                        for report in verification.reports:
                            per_check[slug].setdefault(report.check, []).append(report.duration_s)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    teams = {
        slug: {
            **seconds(totals[slug]),
            "checks_median_s": {c: round(statistics.median(d), 3) for c, d in per_check[slug].items()},
            "files": [a.name for a in results[slug].artifacts],
            "earlier_files": [p.artifact.name for p in contexts[slug]],
        }
        for slug in PIPELINE
    }
    worst = max(PIPELINE, key=lambda slug: statistics.median(totals[slug]))
    return {
        "teams": teams,
        "all_stages": seconds([t for slug in PIPELINE for t in totals[slug]]),
        "worst": {"team": worst, "median_s": teams[worst]["median_s"]},
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


def verdicts(startup: dict[str, Any], stages: dict[str, Any]) -> dict[str, bool]:
    return {
        "startup_true_median_ms": startup["sandbox"]["true"]["median_ms"] <= GOALS["startup_true_median_ms"],
        "startup_python_median_ms": startup["sandbox"]["python"]["median_ms"] <= GOALS["startup_python_median_ms"],
        "stage_checks_median_s": all(t["median_s"] <= GOALS["stage_checks_median_s"] for t in stages["teams"].values()),
    }


async def bench(options: Options) -> dict[str, Any]:
    """Every figure of the benchmark, the goals, and whether each is met."""
    options.check()
    missing = sandbox_available()
    if missing is not None:
        raise SystemExit(missing)
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    startup = await sandbox_startup(options)
    stages = await stage_checks(options)
    return {
        "machine": {**machine(), "load_average_1m_at_start": load_before},
        "options": {**asdict(options), "database_url": redacted(options.database_url)},
        "sandbox_startup": startup,
        "stage_checks": stages,
        "goals": GOALS,
        "pass": verdicts(startup, stages),
        "seconds": round(time.perf_counter() - started, 1),
    }


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    defaults = Options()
    parser.add_argument("--runs", type=int, default=defaults.runs, help="measured runs of each command")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="runs of each command not measured")
    parser.add_argument("--stage-runs", type=int, default=defaults.stage_runs, help="measured checks of each stage")
    parser.add_argument("--stage-warmup", type=int, default=defaults.stage_warmup, help="rounds of stages not measured")
    parser.add_argument(
        "--database-url",
        default=defaults.database_url,
        help="PostgreSQL whose user may create a database and a role (the bench's own, dropped afterwards)",
    )
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
