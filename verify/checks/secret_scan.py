"""``secrets``: hard-coded secrets in any text file — private keys, provider tokens by their known
shapes, credentials in URLs, and a password, secret, token or API key assigned a literal.

Placeholders (``changeme``, ``<your key>``, ``${VAR}``, ``{{ secrets.X }}``, ``os.environ[...]``)
are not secrets. A literal assigned in a test file is reported as low (tests use fake credentials);
a token of a known provider's shape is high wherever it is. Findings show only a secret's first
characters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from verify.base import Finding, Severity
from verify.checks._common import FileByFileCheck

MAX_PER_FILE = 50


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    severity: Severity


TOKEN_RULES = (
    Rule("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"), Severity.CRITICAL),
    Rule("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), Severity.HIGH),
    Rule("GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"), Severity.HIGH),
    Rule("GitLab token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), Severity.HIGH),
    Rule("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), Severity.HIGH),
    Rule(
        "Slack webhook",
        re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/\w+"),
        Severity.HIGH,
    ),
    Rule(
        "OpenAI-style API key",
        re.compile(r"\bsk-(?:proj-|svcacct-|admin-|ant-|live-)?[A-Za-z0-9_-]{20,}"),
        Severity.HIGH,
    ),
    Rule("Stripe key", re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"), Severity.HIGH),
    Rule("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), Severity.HIGH),
)
_NAME = r"[A-Za-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key)"
_QUOTED = re.compile(
    rf"(?i)(?<![A-Za-z0-9_])(?P<name>{_NAME})[\"']?\s*(?::\s*[A-Za-z_][\w\[\]., |]*?\s*)?(?:=|:=|=>|:)\s*"
    r"(?P<q>[\"'`])(?P<value>[^\"'`\n]+)(?P=q)"
)
_UNQUOTED = re.compile(rf"(?i)(?<![A-Za-z0-9_])(?P<name>{_NAME})\s*[:=]\s*(?P<value>[^\s\"'#,;]+)\s*(?:#.*)?$")
_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://(?P<user>[^\s:/@]+):(?P<value>[^\s@/]+)@(?P<host>[^\s/:?#]+)")
CONFIG_SUFFIXES = frozenset({".yaml", ".yml", ".env", ".ini", ".cfg", ".conf", ".properties", ".sh", ".toml"})
CONFIG_NAMES = ("Dockerfile", "Containerfile", ".env")
PLACEHOLDER_WORDS = (
    "example", "changeme", "change-me", "change_me", "placeholder", "your", "dummy", "sample", "xxx", "***",
    "redacted", "replace", "todo", "fixme", "...", "environ", "getenv", "secrets.", "vault:",
)  # fmt: skip
TOKEN_PLACEHOLDERS = ("example", "xxxx", "...")  # a token's shape alone says it is meant to be one
NOT_VALUES = frozenset({"password", "secret", "token", "none", "null", "true", "false", "string", "required", "str"})
LOCAL_HOSTS = frozenset({"localhost", "::1", "0.0.0.0", "db", "postgres", "redis", "mysql", "mariadb", "database"})


def is_placeholder(value: str) -> bool:
    lowered = value.lower().strip()
    return (
        len(lowered) < 6
        or any(word in lowered for word in PLACEHOLDER_WORDS)
        or lowered[0] in "$<{%(["
        or lowered in NOT_VALUES
        or len(set(lowered)) <= 2
        or any(c.isspace() for c in lowered)
    )


def looks_random(value: str) -> bool:
    """A literal that could be a credential: a digit or a symbol in it, or long; a plain word such as
    ``"Bearer"`` or ``"csrftoken"`` (a header or cookie name) is not one."""
    return len(value) >= 16 or any(not c.isalpha() for c in value)


def redact(value: str) -> str:
    return f"{value[:4]}… ({len(value)} characters)"


def is_test_file(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        path.name.startswith("test_")
        or path.stem.endswith("_test")
        or path.name == "conftest.py"
        or "tests" in path.parts[:-1]
    )


def _is_config(name: str) -> bool:
    path = PurePosixPath(name)
    return path.suffix.lower() in CONFIG_SUFFIXES or path.name.startswith(CONFIG_NAMES)


def scan(name: str, text: str) -> list[tuple[int, str, Severity]]:
    """(line, message, severity) for every secret in a file's text."""
    found: dict[tuple[int, str], tuple[int, str, Severity]] = {}
    config, test = _is_config(name), is_test_file(name)
    for number, line in enumerate(text.splitlines(), 1):
        tokens = 0
        for rule in TOKEN_RULES:
            hit = rule.pattern.search(line)
            if hit and not any(word in hit.group(0).lower() for word in TOKEN_PLACEHOLDERS):
                found[(number, rule.kind)] = (number, f"hard-coded {rule.kind} {redact(hit.group(0))}", rule.severity)
                tokens += 1
        for pattern in () if tokens else (_QUOTED, _UNQUOTED) if config else (_QUOTED,):
            for hit in pattern.finditer(line):
                value = hit.group("value")
                if is_placeholder(value) or not looks_random(value):
                    continue
                severity = Severity.LOW if test else Severity.HIGH
                message = f"{hit.group('name')!r} is assigned a literal secret {redact(value)}"
                found.setdefault((number, "assignment"), (number, message, severity))
        for hit in _URL_CREDENTIALS.finditer(line):
            if is_placeholder(hit.group("value")):
                continue
            host = hit.group("host").lower()
            local = host in LOCAL_HOSTS or host.startswith("127.")  # a development or CI service
            severity = Severity.LOW if local or test else Severity.HIGH
            message = f"a URL carries the password of {hit.group('user')!r} {redact(hit.group('value'))}"
            found.setdefault((number, "url"), (number, message, severity))
    return sorted(found.values())[:MAX_PER_FILE]


class SecretsCheck(FileByFileCheck):
    """One finding per secret (per line and kind)."""

    unreadable = Severity.INFO  # a file too large to read is said, not counted as a secret

    def inspect_file(self, name: str, text: str) -> list[Finding]:
        advice = ": read it from an environment variable or a secret store instead"
        return [
            self.finding(name, message + advice, severity=severity, line=line)
            for line, message, severity in scan(name, text)
        ]
