"""``python-import``: each Python module is imported in the sandbox, one process per module, with
the workspace root (and the folders of the workspace's Python files) on the path. Module-level code
runs — which is the point: a missing module, a missing name or an import-time crash is found."""

from __future__ import annotations

from pathlib import PurePosixPath

from verify.base import CheckReport, Finding, Workspace
from verify.checks._common import CatalogCheck
from verify.checks._sandboxed import NotRun, interpreter, last_frame, python_path, run_in_sandbox, stopped, tail

# argv[1] is the file; its dotted name when every part is an identifier, else loaded from its path.
IMPORT = """
import importlib, importlib.util, os, sys
path = sys.argv[1]
parts = path[:-3].split("/")
if parts[-1] == "__init__":
    parts = parts[:-1]
sys.path.append(os.path.dirname(os.path.abspath(path)))
if parts and all(p.isidentifier() for p in parts):
    importlib.import_module(".".join(parts))
else:
    spec = importlib.util.spec_from_file_location("_produced_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
"""
ENV = {"PYTHONNOUSERSITE": "1"}


class PythonImportCheck(CatalogCheck):
    """One finding per module that does not import (the error's last line, where it happened)."""

    async def check(self, workspace: Workspace, artifacts: list[str]) -> CheckReport:
        findings: list[Finding] = []
        files = [*workspace.targets, *workspace.others]
        python = await interpreter(workspace)
        env = {**ENV, "PYTHONPATH": python_path(workspace, python.path)}
        for name in artifacts:
            if PurePosixPath(name).name == "__main__.py":
                continue  # importing it runs the program
            try:
                run = await run_in_sandbox(workspace, [python.executable, "-c", IMPORT, name], env)
            except NotRun as exc:
                return self.skipped(artifacts, str(exc))
            if run.ok:
                continue
            if run.killed:
                message = f"importing it: {stopped(run, workspace.policy.wall_s)}; start servers and loops only"
                message += " under `if __name__ == '__main__':`"
                findings.append(self.finding(name, message))
                continue
            where = last_frame(run.stderr, files)
            error = tail(run.stderr, lines=1) or f"exit code {run.exit_code}"
            at = f" (at {where[0]} line {where[1]})" if where else ""
            owner = where[0] if where else name
            findings.append(
                self.finding(owner, f"{name} does not import: {error}{at}", line=where[1] if where else None)
            )
        return self.report(artifacts, findings)
