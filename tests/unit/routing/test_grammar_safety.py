"""Any JSON schema becomes a grammar llama.cpp parses: bounded, convertible, accepted, never a crash.

The C++ side runs in a subprocess (a crash there is a failed test, not a dead pytest): one parser
process per module, parsing each grammar on a thread with a deliberately small 1 MiB stack, so the
bounds are shown to hold with room to spare (``routing.embedded`` runs llama.cpp on 64 MiB).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.grammar_safety import (
    JSON_OBJECT_GBNF,
    TIERS,
    gbnf_nesting,
    safe_grammar,
    safe_schema,
)
from teams.roster import team
from teams.schema import SchemaBounds, response_schema
from teams.slugs import ALL_TEAMS

llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")

ROOT = Path(__file__).parents[3]
TOOLS = ("recall", "write_artifact", "request_clarification")
SMALL_STACK = 1024 * 1024

# Reads one grammar per line (a JSON string), answers 1 (accepted) or 0 (rejected) per line.
_PARSER = r"""
import json, sys, threading
from llama_cpp import Llama
from routing.embedded import default_model_path
from routing.grammar_sampling import grammar_accepted
model = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
threading.stack_size(int(sys.argv[1]))
for line in sys.stdin:
    result = []
    worker = threading.Thread(target=lambda: result.append(grammar_accepted(model._model, json.loads(line))))
    worker.start()
    worker.join()
    sys.stdout.write("1\n" if result[0] else "0\n")
    sys.stdout.flush()
"""


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Parser:
    """llama.cpp's grammar parser in a child process; a crash is reported with the grammar that did it."""

    def __init__(self, stderr: Path) -> None:
        self._stderr_path = stderr
        self._stderr = stderr.open("wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _PARSER, str(SMALL_STACK)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_no_core_dump,
        )
        self.parsed = 0

    def accepts(self, gbnf: str, timeout_s: float = 60.0) -> bool:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(gbnf).encode() + b"\n")
        self._proc.stdin.flush()
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        answer = self._proc.stdout.readline() if ready else b""
        if answer not in (b"0\n", b"1\n"):
            self._proc.kill()
            code = self._proc.wait(timeout=10)
            log = self._stderr_path.read_text(errors="replace")[-2000:]
            raise AssertionError(f"llama.cpp's parser died (exit {code}) on a grammar of {len(gbnf)} chars: {log}")
        self.parsed += 1
        return answer == b"1\n"

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)
        self._stderr.close()


@pytest.fixture(scope="module")
def parser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parser]:
    p = Parser(tmp_path_factory.mktemp("grammar") / "parser.stderr")
    yield p
    p.close()


def _gbnf(schema: dict[str, Any]) -> str:
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema, allow_nan=False)))


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _reduced(schema: object) -> dict[str, Any]:
    """``safe_schema``, which must not have needed its last resort (an exception turned into any object)."""
    warnings = _Warnings()
    logger = logging.getLogger("routing.grammar_safety")
    logger.addHandler(warnings)
    try:
        safe = safe_schema(schema)
    finally:
        logger.removeHandler(warnings)
    assert not [m for m in warnings.messages if m.startswith("could not reduce")], warnings.messages
    return safe


def _assert_safe(schema: object, parser: Parser) -> dict[str, Any]:
    """The reduced schema converts without error within the limits, and llama.cpp accepts both grammars."""
    safe = _reduced(schema)
    assert safe == safe_schema(schema)  # deterministic
    limits = TIERS[0]
    gbnf = _gbnf(safe)  # the converter takes it: no exception
    assert gbnf_nesting(gbnf) <= limits.grammar_nesting
    assert parser.accepts(gbnf) or len(gbnf) > limits.grammar_chars
    chosen = safe_grammar(schema)
    assert len(chosen.gbnf) <= limits.grammar_chars and gbnf_nesting(chosen.gbnf) <= limits.grammar_nesting
    assert parser.accepts(chosen.gbnf)
    return safe


def _cloud(slug: str = "solution-architecture", bounds: SchemaBounds | None = None) -> dict[str, Any]:
    return response_schema(team(slug), bounds or SchemaBounds(), tools=TOOLS)


def _cycle() -> dict[str, Any]:
    looped: dict[str, Any] = {"type": "object"}
    looped["properties"] = {"self": looped, "list": {"type": "array", "items": looped}}
    looped["anyOf"] = [looped, {"type": "null"}]
    return looped


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": 10**9}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema, "b": {"type": "array", "items": schema}}}
    return schema


def _wide_choices(levels: int) -> dict[str, Any]:
    """anyOf of 32 branches, nested: llama.cpp would follow 32**levels stacks at once."""
    schema: dict[str, Any] = {"enum": list(range(200))}
    for _ in range(levels):
        schema = {"anyOf": [{"type": "object", "properties": {f"k{i}": schema}} for i in range(32)]}
    return schema


HOSTILE: dict[str, object] = {
    "cloud TaskResult, full bounds": _cloud(),
    "maxLength 10**9": {"type": "string", "maxLength": 10**9, "minLength": 10**9},
    "negative and NaN bounds": {"type": "array", "items": {"type": "string", "maxLength": -3}, "maxItems": math.nan},
    "infinite bounds": {"type": "string", "maxLength": math.inf, "minLength": -math.inf},
    "huge float bound": {"type": "array", "maxItems": 1e308, "minItems": 1e300, "items": {"type": "integer"}},
    "bool bounds": {"type": "string", "maxLength": True},
    "huge enum": {"enum": list(range(100_000))},
    "enum of NaN and sets": {"enum": [math.nan, math.inf, {1, 2}, "ok", "ok"]},
    "const NaN": {"type": "object", "properties": {"x": {"const": math.nan}}, "required": ["x"]},
    "huge const": {"const": "x" * 100_000},
    "deep const": {"const": _deep(2000)},
    "deep nesting": _deep(5000),
    "choices multiply": _wide_choices(4),
    "cycle": _cycle(),
    "ref cycle": {"$ref": "#/$defs/a", "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}},
    "ref to root": {"type": "object", "properties": {"next": {"$ref": "#"}}},
    "remote ref": {"$ref": "https://example.invalid/schema.json"},
    "bad ref": {"$ref": "#/nowhere/0/~1x"},
    "pattern": {"type": "string", "pattern": "^a{0,30000}$"},
    "unknown format": {"type": "string", "format": "email", "maxLength": 5000},
    "type list": {"type": ["string", "null", "bogus", 7], "maxLength": 20000},
    "unknown type": {"type": "tensor"},
    "empty anyOf": {"anyOf": []},
    "empty enum": {"enum": []},
    "empty items": {"type": "array", "items": {}},
    "items false": {"type": "array", "items": False},
    "allOf": {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"properties": {"b": {}}}]},
    "odd keys": {"type": "object", "properties": {"": {"type": "string"}, "k" * 10_000: {}, 3: {}}},
    "required garbage": {"type": "object", "properties": {"a": {}}, "required": [["a"], None, {"x": 1}, "a", "a"]},
    "many properties": {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "maxLength": 4000} for i in range(5000)},
    },
    "not a dict": [1, 2, 3],
    "none": None,
    "nan": math.nan,
    "true": True,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_schema_becomes_a_grammar_llama_cpp_accepts(name: str, parser: Parser) -> None:
    safe = _assert_safe(HOSTILE[name], parser)
    json.dumps(safe, allow_nan=False)  # plain JSON, whatever came in


def test_reductions_keep_what_the_grammar_can_say() -> None:
    assert _reduced(HOSTILE["type list"]) == {
        "anyOf": [{"type": "string", "minLength": 0, "maxLength": TIERS[0].string_chars}, {"type": "null"}]
    }
    assert _reduced(HOSTILE["required garbage"])["required"] == ["a"]
    merged = _reduced(HOSTILE["allOf"])
    assert list(merged["properties"]) == ["a", "b"] and merged["required"] == ["a"]
    assert _reduced(HOSTILE["pattern"]) == {"type": "string"}  # the pattern is dropped, not guessed
    assert _reduced({"type": "string", "format": "date-time", "maxLength": 10**6}) == {
        "type": "string",
        "format": "date-time",
    }
    assert _reduced(HOSTILE["huge enum"]) == {"enum": list(range(TIERS[0].enum_values))}
    assert _reduced(HOSTILE["items false"]) == {"type": "array", "prefixItems": []}
    assert _reduced({"type": "array", "items": {"type": "integer"}, "minItems": 10, "maxItems": 2}) == {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 10,
        "maxItems": 10,
    }
    # empty, over-long and non-string names cannot be written as grammar literals: none left, any object
    assert _reduced(HOSTILE["odd keys"]) == {"type": "object"}
    quoted = _reduced({"type": "object", "properties": {'say "hi"': {}, "ok": {"type": "null"}}, "required": ["ok"]})
    assert list(quoted["properties"]) == ["ok"]  # the converter would write a literal llama.cpp refuses
    assert _reduced({"enum": ['a"b', "back\\slash", "new\nline", "ok", "é", "😀"]}) == {"enum": ["ok", "é"]}


def test_the_compact_schema_the_embedded_model_gets_first_keeps_its_exact_grammar() -> None:
    for tools in ((), TOOLS):
        schema = response_schema(team("api-design"), SchemaBounds.compact(), tools=tools)
        assert safe_grammar(schema).gbnf == _gbnf(schema)


def test_the_cloud_schema_keeps_its_structure_with_strings_clamped() -> None:
    schema = _cloud("solution-architecture")
    safe = safe_schema(schema)
    assert len(safe["anyOf"]) == len(schema["anyOf"]) == 6  # three tools, three statuses
    complete = safe["anyOf"][3]
    assert complete["properties"]["status"] == {"const": "COMPLETE"}
    assert complete["required"] == schema["anyOf"][3]["required"]
    assert complete["additionalProperties"] is False
    assert complete["properties"]["reasoning"]["maxLength"] == TIERS[0].string_chars  # was 4000
    artifacts = complete["properties"]["artifacts"]["prefixItems"]
    assert [a["properties"]["name"] for a in artifacts] == [
        {"const": d.name} for d in team("solution-architecture").produces
    ]
    assert artifacts[0]["properties"]["content"]["maxLength"] == TIERS[0].string_chars  # was 20000
    blocked = safe["anyOf"][5]["properties"]["blockers"]
    assert blocked["minItems"] == 1 and blocked["items"]["minLength"] == 1
    assert safe["anyOf"][4]["properties"]["clarification_needed"]["properties"]["target_team"]["enum"] == [
        slug for slug in ALL_TEAMS if slug != "solution-architecture"
    ]


def test_answers_within_the_clamps_keep_their_verdict() -> None:
    """What the cloud schema accepts (or refuses) within the clamped lengths, the safe one does too."""
    schema = _cloud("business-analysis", SchemaBounds(confidence_steps=True))
    safe = safe_schema(schema)
    [deliverable] = team("business-analysis").produces
    answer = {
        "status": "BLOCKED",
        "reasoning": "r" * 700,
        "blockers": ["no access to the billing system"],
        "assumptions_made": [],
        "verified_facts": ["a"],
        "clarification_needed": None,
        "artifacts": [{"name": deliverable.name, "kind": deliverable.kind, "content": "c" * 800}],
        "confidence": 0.4,
    }
    for candidate, valid in ((answer, True), ({**answer, "blockers": []}, False), ({**answer, "extra": 1}, False)):
        for s in (schema, safe):
            assert jsonschema.Draft202012Validator(s).is_valid(candidate) is valid


def test_a_schema_too_large_for_the_first_limits_is_tightened_then_plain_json(parser: Parser) -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 900} for i in range(60)}}
    big = {"anyOf": [wide, {**wide, "required": ["p0"]}, {**wide, "required": ["p1"]}]}
    tightened = safe_grammar(big)
    assert tightened.note.startswith("schema bounds tightened") and parser.accepts(tightened.gbnf)
    assert tightened.schema["anyOf"][0]["properties"]["p0"]["maxLength"] == TIERS[1].string_chars
    enormous = {"anyOf": [{**wide, "required": [f"p{i}"]} for i in range(32)]}
    plain = safe_grammar(enormous)
    assert plain.gbnf == JSON_OBJECT_GBNF and plain.schema == {"type": "object"} and plain.note


def test_the_fallback_grammar_is_the_converters_any_object(parser: Parser) -> None:
    assert JSON_OBJECT_GBNF == _gbnf({"type": "object"})
    assert parser.accepts(JSON_OBJECT_GBNF)


def test_nesting_counts_groups_not_parentheses_in_literals_or_classes() -> None:
    assert gbnf_nesting('root ::= "(((" [()\\]] ( "a" ( "b" )? )*  # (((\nx ::= ")"') == 2
    assert gbnf_nesting(JSON_OBJECT_GBNF) == 15
    assert gbnf_nesting('root ::= "\\"(" ("a")') == 1


# -- properties ------------------------------------------------------------------------------

_BOUND = st.one_of(
    st.integers(-5, 40),
    st.sampled_from([10**9, 20_000, 4000, 1001, -1, True, None, "7"]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=8))
_NAME = st.one_of(st.text(max_size=6), st.sampled_from(["", "root", "space", "char", "string", "a-b", "ключ", '"\\']))
_TYPE = st.one_of(
    st.sampled_from(["object", "array", "string", "number", "integer", "boolean", "null", "bogus"]),
    st.lists(st.sampled_from(["string", "null", "object", "x"]), max_size=3),
    _SCALAR,
)
_LEAF_KEYS = {
    "type": _TYPE,
    "maxLength": _BOUND,
    "minLength": _BOUND,
    "maxItems": _BOUND,
    "minItems": _BOUND,
    "enum": st.lists(_SCALAR, max_size=6),
    "const": _SCALAR,
    "pattern": st.sampled_from(["^a+$", "^(a|b){0,3000}$", "[", "x"]),
    "format": st.sampled_from(["date", "uuid", "email", "date-time", "time", 5]),
    "$ref": st.sampled_from(["#", "#/properties/a", "#/$defs/x", "https://x.invalid/s", "nope", "#/anyOf/0"]),
    "minimum": _SCALAR,
}
_LEAF = st.one_of(st.fixed_dictionaries({}, optional=_LEAF_KEYS), st.booleans(), _SCALAR)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {},
        optional={
            **_LEAF_KEYS,
            "properties": st.dictionaries(_NAME, children, max_size=4),
            "required": st.lists(st.one_of(_NAME, _SCALAR), max_size=4),
            "additionalProperties": st.one_of(st.booleans(), children),
            "items": st.one_of(st.booleans(), children),
            "prefixItems": st.lists(children, max_size=3),
            "anyOf": st.lists(children, max_size=4),
            "oneOf": st.lists(children, max_size=3),
            "allOf": st.lists(children, max_size=3),
            "$defs": st.fixed_dictionaries({"x": children}),
        },
    )


_SCHEMA = st.recursive(_LEAF, _extend, max_leaves=25)
_CLOUD_BOUNDS = st.builds(
    SchemaBounds,
    reasoning_chars=st.integers(0, 10**6),
    item_chars=st.integers(0, 10**5),
    list_items=st.integers(0, 10**4),
    content_chars=st.integers(0, 10**6),
    confidence_steps=st.booleans(),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_SCHEMA)
def test_any_schema_becomes_an_accepted_grammar(schema: object, parser: Parser) -> None:
    _assert_safe(schema, parser)


@settings(max_examples=25, deadline=None)
@given(slug=st.sampled_from(ALL_TEAMS), bounds=_CLOUD_BOUNDS, tools=st.sampled_from([(), TOOLS]))
def test_any_taskresult_schema_becomes_an_accepted_grammar(
    slug: str, bounds: SchemaBounds, tools: tuple[str, ...], parser: Parser
) -> None:
    _assert_safe(response_schema(team(slug), bounds, tools=tools), parser)


# -- the defect, and the large stack ---------------------------------------------------------

_PARSE_ONCE = r"""
import sys
from llama_cpp import Llama
from routing.embedded import default_model_path, run_on_large_stack
from routing.grammar_sampling import grammar_accepted
model = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
gbnf = sys.stdin.read()
parse = lambda: grammar_accepted(model._model, gbnf)
print(run_on_large_stack(parse) if sys.argv[1] == "large" else parse(), flush=True)
"""


def _parse_once(gbnf: str, where: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PARSE_ONCE, where],
        input=gbnf,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_no_core_dump,
    )


def test_the_raw_cloud_grammar_overflows_the_parser_stack_and_a_large_stack_only_turns_it_into_a_refusal() -> None:
    """The defect of issue 14 item 7, as it was: the unbounded grammar kills an 8 MiB main thread
    (SIGSEGV in llama_grammar_parser::parse_sequence). On ``run_on_large_stack`` the parse ends, in
    a refusal (too many rules before a repetition): the clamp is what makes the grammar usable."""
    raw = _gbnf(_cloud("business-analysis"))  # content of 20,000 characters: 20,000 nested groups
    assert gbnf_nesting(raw) == 20_000
    crashed = _parse_once(raw, "main")
    assert crashed.returncode == -signal.SIGSEGV, (
        f"exit {crashed.returncode}: if llama.cpp's parser no longer recurses per group, this test can go"
    )
    survived = _parse_once(raw, "large")
    assert survived.returncode == 0 and survived.stdout.strip() == "False", survived.stderr[-2000:]


def test_llama_cpp_refuses_strings_longer_than_1000_so_the_clamp_stays_below(parser: Parser) -> None:
    """The refusal line the bounds are set against: a NULL sampler from here on (a crash, unchecked)."""
    assert parser.accepts(_gbnf({"type": "string", "maxLength": 1000}))
    assert not parser.accepts(_gbnf({"type": "string", "maxLength": 1001}))
    assert not parser.accepts(_gbnf({"type": "array", "items": {"type": "integer"}, "maxItems": 1001}))
    assert TIERS[0].string_chars < TIERS[0].grammar_nesting < 1000
