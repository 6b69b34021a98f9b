"""One module per check of the catalog; ``CHECK_TYPES`` maps each tool id to its class."""

from __future__ import annotations

from collections.abc import Callable

from verify.base import Check
from verify.checks.ci_yaml import CIYamlCheck
from verify.checks.data_parse import DataParseCheck
from verify.checks.dockerfile import DockerfileCheck
from verify.checks.lint import RuffCheck
from verify.checks.mermaid import MermaidCheck
from verify.checks.openapi import OpenAPICheck
from verify.checks.python_import import PythonImportCheck
from verify.checks.python_syntax import PythonSyntaxCheck
from verify.checks.secret_scan import SecretsCheck
from verify.checks.security_scan import BanditCheck
from verify.checks.sql_apply import SqlApplyCheck
from verify.checks.unit_tests import PytestCheck
from verify.registry import ToolSpec

CHECK_TYPES: dict[str, Callable[[ToolSpec], Check]] = {
    "python-syntax": PythonSyntaxCheck,
    "python-import": PythonImportCheck,
    "ruff": RuffCheck,
    "pytest": PytestCheck,
    "data-parse": DataParseCheck,
    "openapi": OpenAPICheck,
    "sql-apply": SqlApplyCheck,
    "dockerfile": DockerfileCheck,
    "ci-yaml": CIYamlCheck,
    "bandit": BanditCheck,
    "secrets": SecretsCheck,
    "mermaid": MermaidCheck,
}

__all__ = ["CHECK_TYPES"]
