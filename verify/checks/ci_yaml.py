"""``ci-yaml``: a CI pipeline's structure — GitHub Actions (``on``; ``jobs`` each with ``runs-on`` and
``steps``, or a reusable workflow's ``uses``) or GitLab CI (jobs with ``script``, known stages)."""

from __future__ import annotations

from verify.base import Finding
from verify.checks._common import FileByFileCheck
from verify.checks.data_parse import parse_yaml

GITLAB_KEYWORDS = frozenset(
    "after_script before_script cache default image include services stages variables workflow pages".split()
)
GITLAB_DEFAULT_STAGES = ("build", "test", "deploy")  # when `stages:` is not given
GITLAB_JOB_BODY = ("script", "trigger", "extends", "run")


def _gha_on(doc: dict[object, object]) -> object:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True
    return doc.get("on", doc.get(True))


class CIYamlCheck(FileByFileCheck):
    """Findings per CI file: it does not parse, is neither format, or breaks the format's rules."""

    def inspect_file(self, name: str, text: str) -> list[Finding]:
        return self.inspect(name, parse_yaml(text))  # a DataParseError is the finding, at its line

    def inspect(self, name: str, docs: list[object]) -> list[Finding]:
        if len(docs) != 1 or not isinstance(docs[0], dict):
            return [self.finding(name, "a CI pipeline is one YAML mapping (GitHub Actions or GitLab CI)")]
        doc = docs[0]
        if "jobs" in doc or _gha_on(doc) is not None or "/workflows/" in f"/{name}":
            return [self.finding(name, m) for m in github_actions(doc)]
        if any(isinstance(v, dict) and any(k in v for k in GITLAB_JOB_BODY) for v in doc.values()):
            return [self.finding(name, m) for m in gitlab_ci(doc)]
        return [
            self.finding(
                name,
                "not a recognised CI pipeline: expected GitHub Actions (`on:` and `jobs:`) or GitLab CI"
                " (top-level jobs with `script:`)",
            )
        ]


def github_actions(doc: dict[object, object]) -> list[str]:
    """What is wrong with a GitHub Actions workflow's structure."""
    problems: list[str] = []
    if _gha_on(doc) is None:
        problems.append("GitHub Actions workflow without `on:` (the events that trigger it)")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        return problems + ["GitHub Actions workflow without `jobs:` (a mapping of job ids to jobs)"]
    for job_id, job in jobs.items():
        if not isinstance(job, dict):
            problems.append(f"job {job_id!r} is not a mapping")
            continue
        if "uses" in job:  # a call to a reusable workflow: no runner, no steps
            continue
        if "runs-on" not in job:
            problems.append(f"job {job_id!r} has no `runs-on:` (the runner it runs on)")
        steps = job.get("steps")
        if not isinstance(steps, list) or not steps:
            problems.append(f"job {job_id!r} has no `steps:` list")
        else:
            for index, step in enumerate(steps, 1):
                if not isinstance(step, dict) or not ("run" in step or "uses" in step):
                    problems.append(f"job {job_id!r}, step {index}: a step needs `run:` or `uses:`")
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs if isinstance(needs, list) else []:
            if need not in jobs:
                problems.append(f"job {job_id!r} needs {need!r}, which is not a job of this workflow")
    return problems


def gitlab_ci(doc: dict[object, object]) -> list[str]:
    """What is wrong with a GitLab CI pipeline's structure."""
    problems: list[str] = []
    stages = doc.get("stages")
    if stages is not None and not (isinstance(stages, list) and all(isinstance(s, str) for s in stages)):
        problems.append("`stages:` must be a list of stage names")
        stages = None
    known = {".pre", ".post"} | set(stages if stages is not None else GITLAB_DEFAULT_STAGES)
    jobs = {k: v for k, v in doc.items() if k not in GITLAB_KEYWORDS and not str(k).startswith(".")}
    if not jobs:
        problems.append("GitLab CI pipeline without jobs")
    for job_id, job in jobs.items():
        if not isinstance(job, dict):
            problems.append(f"{job_id!r} is neither a GitLab CI keyword nor a job (a mapping with `script:`)")
            continue
        if not any(k in job for k in GITLAB_JOB_BODY):
            problems.append(f"job {job_id!r} has no `script:` (or `trigger:` / `extends:`)")
        script = job.get("script")
        if script is not None and not isinstance(script, str | list):
            problems.append(f"job {job_id!r}: `script:` must be a command or a list of commands")
        stage = job.get("stage")
        if stage is not None and stage not in known:
            problems.append(f"job {job_id!r} is in stage {stage!r}, which `stages:` does not list")
    return problems
