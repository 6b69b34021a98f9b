"""Issue 14, item 3: no secret leaves the process — not in logs, audit, events, ``--json`` output or
error messages.

Four fake keys are configured the ways an operator configures them: one in an environment variable
named by the routing (``env:``), one stored with ``factory secrets set`` (``secret:``), and the two
cloud keys, named as the defaults name them (OpenAI, Anthropic; those calls fail: no network). A
pipeline runs with DEBUG logs through real LiteLLM against fake providers, one of them hostile: it
quotes the request's ``Authorization`` header back in its error. Calls fall back, a deployment cools
down, a whole chain fails and fails its run. Then every command's stdout and stderr, every row of
every table, every Redis key under the test's prefix, the PostgreSQL server log and every file of
the data dir (artifact bundles included) are scanned for the keys and for distinctive pieces of them.
A ``--json`` command must print its document alone on stdout (a log line there bypasses the redaction
of the factory's log handlers).
The scan means something only if the keys were really used: provider A must have received the
environment key and provider B the stored one in their ``Authorization`` headers.
"""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from redis import Redis

from tests.fakeprovider import FakeProvider
from tests.integration.cli import factory

pytestmark = pytest.mark.integration

KEY_ENV = "FACTORY_TEST_VENDOR_KEY"  # provider A's key, named by reference env:FACTORY_TEST_VENDOR_KEY
SECRET = "VENDOR_B"  # provider B's key, stored encrypted and named by reference secret:VENDOR_B
CHAT = "/v1/chat/completions"
REQ = "A tiny notes app: create, list and delete notes over an HTTP API."
MASK = "[redacted]"
ECHOED = f"upstream refused the credentials 'Bearer {MASK}'"  # a hostile provider's error, as kept
COMMAND_TIMEOUT_S = 120.0
READERS = 4  # reading commands run at once
_ALPHABET = string.ascii_letters + string.digits  # not hex: no digest or id can hold a piece by chance


@dataclass(frozen=True)
class FakeKey:
    """A fake API key: a recognisable prefix and a random part no output could hold by chance."""

    label: str
    prefix: str
    random: str = field(default_factory=lambda: "".join(secrets.choice(_ALPHABET) for _ in range(32)))

    @property
    def value(self) -> str:
        return self.prefix + self.random

    def needles(self) -> dict[str, str]:
        """What must appear nowhere: the key, its random part, its head and tail (a partial mask
        that shows too much), and its hex form (PostgreSQL prints bytea as hex)."""
        return {
            f"{self.label} key": self.value,
            f"{self.label} random part": self.random,
            f"{self.label} head": self.value[: len(self.prefix) + 8],
            f"{self.label} tail": self.random[-10:],
            f"{self.label} as hex": self.random.encode().hex(),
        }


@dataclass
class Transcript:
    """Every `factory` command the test ran, with its stdout and stderr, to scan afterwards."""

    env: dict[str, str]
    keep: Path  # each command's output is also written here, to read when the test fails
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = factory(*args, env=self.env, stdin=stdin, timeout=COMMAND_TIMEOUT_S)
        took, label = time.monotonic() - started, " ".join(args[:4])
        with self._lock:
            self.runs.append((label, proc))
            name = f"{len(self.runs):02d}-{'-'.join(a for a in args[:3] if a.isidentifier())}"
        self.keep.mkdir(parents=True, exist_ok=True)
        (self.keep / f"{name}.out").write_text(f"# factory {label} -> {proc.returncode} in {took:.1f}s\n{proc.stdout}")
        (self.keep / f"{name}.err").write_text(proc.stderr)
        return proc

    def texts(self) -> Iterator[tuple[str, str]]:
        for label, proc in self.runs:
            yield f"stdout of `factory {label}`", proc.stdout
            yield f"stderr of `factory {label}`", proc.stderr


def _json_of(proc: subprocess.CompletedProcess[str], problems: list[str]) -> Any:
    """A ``--json`` command's document. Anything else on stdout (a log line) is a problem: stdout is
    for the document, logs go to stderr through the factory's redaction. The document is still read
    past such lines, so the rest of the scan runs and reports too."""
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        problems.append(f"stdout of `factory {' '.join(proc.args[1:5])}` is not its JSON alone: {proc.stdout[:200]!r}")
    decoder, text = json.JSONDecoder(), proc.stdout
    found: list[Any] = []
    for at in (i for i, c in enumerate(text) if c in "{[" and (i == 0 or text[i - 1] == "\n")):
        try:
            document, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            continue
        found.append(document)
    assert found, f"no JSON document on stdout of {proc.args[1:5]}: {text[:500]!r}"
    return found[-1]  # the command prints its document last


def _deployment(provider: FakeProvider, key: dict[str, str]) -> dict[str, Any]:
    return {"model": "openai/test-model", "api_base": provider.url, "key": key, "timeout_s": 20,
            "price_in_per_m": 1.0, "price_out_per_m": 2.0, "structured": "json_schema"}  # fmt: skip


def _routing(a: FakeProvider, b: FakeProvider) -> dict[str, Any]:
    """cheap (both teams of the main run, and memory extraction): A (hostile), B, then the scripted
    model. architect (the second run): A, B and the two cloud defaults — nothing there answers.
    One failure in a row is tolerated, so B answers after its first failure and A cools on its second."""
    dep_a, dep_b = _deployment(a, {"env": KEY_ENV}), _deployment(b, {"secret": SECRET})
    cloud = [
        {"model": "openai/gpt-4o-mini", "key": {"env": "OPENAI_API_KEY"}, "timeout_s": 10},
        {"model": "anthropic/claude-haiku-4-5", "key": {"env": "ANTHROPIC_API_KEY"}, "timeout_s": 10},
    ]
    scripted = {"model": "factory-local/scripted"}
    return {
        "aliases": {
            "factory/cheap": [dep_a, dep_b, scripted],
            "factory/coder": [dep_a, dep_b, scripted],
            "factory/fast": [*cloud, scripted],
            "factory/architect": [dep_a, dep_b, *cloud],
        },
        "cooldown": {"allowed_fails": 1, "cooldown_s": 600},
    }


# ---------------------------------------------------------------------------------------- sources


def _database(pg_url: str) -> Iterator[tuple[str, str]]:
    """Every row of every table of the test's database, as PostgreSQL prints it."""
    with psycopg.connect(pg_url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
            ).fetchall()
        ]
        assert {"runs", "usage_ledger", "audit_entries", "secrets"} <= set(tables), tables
        for table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
            for (row,) in conn.execute(query):
                yield f"a row of table {table}", row


def _redis(redis_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    """Every key under the test's prefix, read by its type (streams entry by entry)."""
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            kind = client.type(key)
            if kind == "string":
                values: Any = client.get(key)
            elif kind == "hash":
                values = client.hgetall(key)
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "set":
                values = client.smembers(key)  # a set: json's default=str prints it
            elif kind == "zset":
                values = client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                values = client.xrange(key)  # trimmed by its writers: bounded
            else:
                values = None
            yield f"Redis {kind} {key}", f"{key} {json.dumps(values, default=str)}"
    finally:
        client.close()


def _files(root: Path) -> Iterator[tuple[str, str]]:
    """Every regular file under ``root``, as text (bytes that are not UTF-8 replaced)."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        yield f"file {path}", path.read_bytes().decode("utf-8", errors="replace")


def _leaks(needles: dict[str, str], sources: list[tuple[str, str]]) -> list[str]:
    return [f"{what} in {where}" for where, text in sources for what, needle in needles.items() if needle in text]


# ---------------------------------------------------------------------------------------- the test


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_key_reaches_any_output_log_row_or_event(
    log_format: str,
    env: dict[str, str],
    pg_url: str,
    redis_base_url: str,
    redis_prefix: str,
    fake_providers: Callable[..., list[FakeProvider]],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    a, b = fake_providers(2)
    a.default = "echo_key_error"  # hostile: quotes the Authorization header back in its error
    key_a, key_b = FakeKey("env", "sk-leak-env-"), FakeKey("stored secret", "sk-leak-secret-")
    openai, anthropic = FakeKey("OpenAI", "sk-leak-openai-"), FakeKey("Anthropic", "sk-ant-leak-")
    needles = {k: v for key in (key_a, key_b, openai, anthropic) for k, v in key.needles().items()}
    run = Transcript(keep=tmp_path / "transcript", env={
        **env,  # FACTORY_SCRIPTED_MODEL stays: the scripted model is the last resort of two chains
        "FACTORY_LOG_LEVEL": "DEBUG",
        "FACTORY_LOG_FORMAT": log_format,  # JSON lines (issue 16) are scanned as well as text ones
        "FACTORY_MEMORY_EXTRACTION": "model",  # memory extraction calls factory/cheap too
        "FACTORY_ROUTING": json.dumps(_routing(a, b)),
        KEY_ENV: key_a.value,
        "OPENAI_API_KEY": openai.value,
        "ANTHROPIC_API_KEY": anthropic.value,
    })  # fmt: skip

    problems: list[str] = []  # what is wrong besides a leak, reported with the leaks
    stored = run("secrets", "set", SECRET, stdin=key_b.value + "\n")
    assert stored.returncode == 0, stored.stderr

    # -- the main run: every call falls back, A cools down, B fails once then answers -------------
    b.push("echo_key_error")  # B's first call quotes the stored secret back
    main = run("run", REQ, "--pipeline", "business-analysis,product-management", "--json")
    assert main.returncode == 0, main.stdout + main.stderr
    out = _json_of(main, problems)
    assert out["status"] == "complete" and [s["team"] for s in out["stages"]] == [
        "business-analysis", "product-management"
    ]  # fmt: skip

    if log_format == "json":  # one JSON object a line, the run's lines tagged with it
        lines = [json.loads(line) for line in main.stderr.splitlines() if line.strip()]
        assert lines and all(isinstance(line, dict) and {"level", "message"} <= line.keys() for line in lines)
        assert any(line.get("run_id") == out["run_id"] and "team" in line for line in lines), lines[-5:]
        assert any(ECHOED in line["message"] for line in lines), "the hostile echo was not logged: nothing scanned"

    with Redis.from_url(redis_base_url) as client:
        cooling = client.keys(f"{redis_prefix}routing:cooldown:*")
    assert cooling, "A did not cool down: the cooldown's mirror in Redis was not exercised"

    # -- a run whose chain fails on every deployment: its error travels everywhere ---------------
    b.push("error_500")
    failing = run("run", REQ, "--pipeline", "solution-architecture", "--json")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    failed = _json_of(failing, problems)
    assert failed["status"] == "failed" and "no deployment of factory/architect answered" in failed["error"]

    # -- every reading command, as an operator would use them (at once: they only read) ----------
    reads = [
        ("routing", "show"),
        ("routing", "show", "--json"),
        ("routing", "test", "--json"),  # one real call per deployment: A and the cloud fail
        ("usage", "--json"),
        ("audit", "show", out["run_id"]),
        ("audit", "show", failed["run_id"]),
        ("secrets", "list", "--json"),
        ("hitl", "list", "--json"),
        ("doctor", "--json"),
    ]
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        shown = dict(zip(reads, pool.map(lambda args: run(*args), reads), strict=True))
    for args, proc in shown.items():
        expected = (1,) if args[:2] == ("routing", "test") else (0, 1)
        assert proc.returncode in expected, f"factory {' '.join(args)}: {proc.stdout}{proc.stderr}"
    documents = {args: _json_of(proc, problems) for args, proc in shown.items() if "--json" in args}
    probes = documents[("routing", "test", "--json")]
    assert any(p["deployment"] == f"openai/test-model@{a.url}" and not p["ok"] for p in probes), probes

    # -- the keys were really used (else the scan proves nothing) ---------------------------------
    sent_a = [s.headers.get("authorization") for s in a.requests if s.path == CHAT]
    sent_b = [s.headers.get("authorization") for s in b.requests if s.path == CHAT]
    assert sent_a and set(sent_a) == {f"Bearer {key_a.value}"}, sent_a
    assert sent_b and set(sent_b) == {f"Bearer {key_b.value}"}, sent_b
    # 2 of the main run (then A cools), 1 of the failing run, 1 probe
    assert len(sent_a) == 4 and len(sent_b) >= 5, (sent_a, sent_b)

    with psycopg.connect(pg_url) as conn:
        hops = [
            hop
            for (fallbacks,) in conn.execute("SELECT fallbacks FROM usage_ledger WHERE run_id = %s", (out["run_id"],))
            for hop in fallbacks
        ]
        failed_calls = conn.execute(
            "SELECT error FROM usage_ledger WHERE run_id = %s AND NOT ok", (failed["run_id"],)
        ).fetchall()
    echoed = [h["reason"] for h in hops if "upstream refused the credentials" in h["reason"]]
    assert len(echoed) == 3 and all(ECHOED in r for r in echoed), hops  # A twice, B once: masked
    assert any(h["kind"] == "cooling" for h in hops), hops
    assert failed_calls and all(MASK in e for (e,) in failed_calls), failed_calls

    # -- the run records its routing: key references, never keys ----------------------------------
    audit = [json.loads(line) for line in shown[("audit", "show", out["run_id"])].stdout.splitlines()]
    created = next(e["payload"] for e in audit if e["kind"] == "run.created")
    cheap = created["routing"]["aliases"]["factory/cheap"]
    assert [d.get("key") for d in cheap] == [{"env": KEY_ENV}, {"secret": SECRET}, None]
    assert created["routing"]["aliases"]["factory/architect"][2]["key"] == {"env": "OPENAI_API_KEY"}

    # -- the scan ---------------------------------------------------------------------------------
    sources = list(run.texts())
    sources += _database(pg_url)
    kept = list(_redis(redis_base_url, redis_prefix))
    keys = [where.split(" ", 2)[2] for where, _ in kept]
    assert f"{redis_prefix}events" in keys and any("routing:cooldown:" in k for k in keys), keys
    sources += kept
    sources += _files(Path(env["FACTORY_DATA_DIR"]))  # anything the factory wrote in its data dir
    bundle = list(_files(Path(out["artifacts_dir"])))  # the artifact bundle (wherever it was written)
    assert bundle, f"the run wrote no artifacts under {out['artifacts_dir']}"
    sources += bundle
    server_logs = {p.resolve() for p in tmp_path_factory.getbasetemp().glob("pg*/pg/log")}  # PostgreSQL's own
    for log in sorted(server_logs):
        sources += _files(log) if log.is_dir() else [(f"file {log}", log.read_text(errors="replace"))]

    # Each surface did carry the hostile provider's text (masked), so scanning it means something.
    for surface in (
        "stderr of `factory run",
        "stdout of `factory run",
        "stdout of `factory audit show",
        "a row of table usage_ledger",
        "a row of table audit_entries",
        f"Redis stream {redis_prefix}events",
    ):
        assert any(w.startswith(surface) and ECHOED in t for w, t in sources), f"no masked echo in {surface}"
    debug = ' "level": "DEBUG"' if log_format == "json" else " DEBUG "
    assert any(debug in t for w, t in sources if w.startswith("stderr of `factory run")), "no DEBUG log"
    assert _leaks(needles, [("a planted piece", f"x{key_b.random[-10:]}y")]), "the scan finds nothing"

    leaks = _leaks(needles, sources)
    assert not leaks and not problems, "\n".join(["secrets leaked:", *leaks, "other problems:", *problems])
