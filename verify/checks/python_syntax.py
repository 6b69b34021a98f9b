"""``python-syntax``: Python files parse with the standard library's own parser (nothing runs)."""

from __future__ import annotations

import ast

from verify.base import Finding
from verify.checks._common import FileByFileCheck


class PythonSyntaxCheck(FileByFileCheck):
    """Compiles each file to an AST; a syntax error is a finding at its line."""

    def inspect_file(self, name: str, text: str) -> list[Finding]:
        try:
            ast.parse(text, filename=name)
        except SyntaxError as exc:  # IndentationError and TabError are SyntaxErrors
            where = f" (line {exc.lineno}, column {exc.offset})" if exc.lineno else ""
            source = (exc.text or "").strip()
            shown = f": {source[:160]}" if source else ""
            return [self.finding(name, f"{type(exc).__name__}: {exc.msg}{where}{shown}", line=exc.lineno)]
        except (ValueError, RecursionError, MemoryError) as exc:
            return [self.finding(name, f"cannot be parsed: {type(exc).__name__}: {exc}")]
        return []
