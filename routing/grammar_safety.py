"""Turn any JSON schema into a grammar llama.cpp can take without crashing the process.

llama-cpp-python converts a JSON schema to GBNF in Python; llama.cpp then parses the GBNF in C++.
The converter writes a bounded repetition as nested optional groups: ``maxLength: N`` becomes
``(char (char (... )?)?)?`` N deep. Two limits of llama.cpp (as built with llama-cpp-python
0.3.36, measured here on x86-64) follow, and crossing either kills the process with SIGSEGV:

- Its recursive-descent parser (``parse_alternates`` ↔ ``parse_sequence``) recurses once per nested
  group, ~450 bytes of C stack each: the stack overflows past ~18,700 levels on 8 MiB (main thread
  or worker alike), ~2,300 on 1 MiB, ~560 on 256 KiB.
- It refuses a group that generated 2,000 rules or more before a repetition (two per level: a
  ``maxLength`` above 1,000), and returns a NULL sampler, which llama-cpp-python chains regardless:
  the crash comes at the first token.

The cloud bounds of a TaskResult (4,000 characters of reasoning, 20,000 of content) crossed both;
the compact bounds the embedded model gets when it is the first choice (at most 700) cross neither.

So every schema bound for the embedded model goes through :func:`safe_grammar`:

1. :func:`safe_schema` keeps what the converter handles (objects, required, arrays, tuples via
   ``prefixItems``, strings with lengths, ``const``, ``enum``, ``anyOf``), with every repetition,
   list, name, literal, branch count and depth clamped; it inlines local ``$ref`` s (bounded, so
   cycles end), merges ``allOf`` and drops what it cannot bound (``pattern``, unknown ``format``,
   number ranges, ``not``, ``if``). It never raises: the worst case is a plain object schema.
2. The GBNF is generated and measured: nested deeper than ``grammar_nesting`` or longer than
   ``grammar_chars`` → tighter limits, then a plain JSON-object grammar. The gate validates and
   repairs the answer afterwards, so a looser grammar costs quality, never correctness.

``routing.embedded`` also checks that llama.cpp accepts the text and parses it on a large stack.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, islice
from typing import Any

log = logging.getLogger(__name__)

#: What ``json_schema_to_gbnf('{"type": "object"}')`` writes: any JSON object (a test checks it).
_DIGITS = "([0-9] " * 14 + "([0-9])?" + ")?" * 14  # at most 15 more digits, as the converter writes them
JSON_OBJECT_GBNF = "\n".join(
    [
        r'array ::= "[" space ( value ("," space value)* )? "]" space',
        r'boolean ::= ("true" | "false") space',
        r'char ::= [^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])',
        f"decimal-part ::= [0-9] {_DIGITS}",
        f"integral-part ::= [0-9] | [1-9] {_DIGITS}",
        r'null ::= "null" space',
        r'number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
        r'object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
        "root ::= object",
        r'space ::= " "?',
        r'string ::= "\"" char* "\"" space',
        "value ::= object | array | string | number | boolean | null",
    ]
)

_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_FORMATS = frozenset({"date", "time", "date-time", "uuid"})  # fixed, shallow rules in the converter
_LITERAL_OR_CLASS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*', re.DOTALL)


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds of a schema the embedded grammar takes.

    ``string_chars`` sets the deepest nesting a schema can ask for: 800 is 80% of llama.cpp's
    refusal line (1,000) and needs ~360 KB of C stack, a third of a 1 MiB thread's. ``fanout``
    bounds the product of ``anyOf``/``enum`` choices along a path, i.e. how many grammar stacks
    llama.cpp follows at once (each costs time on every token). ``grammar_nesting`` is checked on
    the generated text, whatever produced it.
    """

    string_chars: int = 800
    array_items: int = 64
    tuple_items: int = 32
    enum_values: int = 128
    literal_chars: int = 512
    branches: int = 32
    fanout: int = 256
    properties: int = 64
    name_chars: int = 128
    depth: int = 12
    nodes: int = 2000
    grammar_chars: int = 1_000_000
    grammar_nesting: int = 900


#: Tried in order; after the last, the plain JSON-object grammar.
TIERS = (GrammarLimits(), GrammarLimits(string_chars=200, array_items=8, nodes=400, grammar_chars=400_000))


@dataclass(frozen=True)
class SafeGrammar:
    """A GBNF text within limits, the schema it came from, and what was given up to get it."""

    gbnf: str
    schema: dict[str, Any]
    note: str  # "" when the first tier fitted


def safe_grammar(schema: object) -> SafeGrammar:
    """The GBNF for ``schema`` that fits the limits (never raises; worst case any JSON object)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # heavy (loads libllama): only when used

    for i, limits in enumerate(TIERS):
        safe = safe_schema(schema, limits)
        if (estimate := _grammar_size(safe)) > limits.grammar_chars:  # not worth writing out
            log.warning("grammar of about %d chars is over the limit; trying a simpler one", estimate)
            continue
        try:
            gbnf = json_schema_to_gbnf(json.dumps(safe, allow_nan=False))
        except Exception as exc:  # the converter asserts and raises freely; the next tier or plain JSON
            log.warning("JSON schema to grammar failed (%s: %s); trying a simpler grammar", type(exc).__name__, exc)
            continue
        nesting = gbnf_nesting(gbnf)
        if len(gbnf) <= limits.grammar_chars and nesting <= limits.grammar_nesting:
            return SafeGrammar(gbnf, safe, "" if i == 0 else f"schema bounds tightened (tier {i + 1})")
        log.warning("grammar of %d chars nested %d deep is over the limits; trying a simpler one", len(gbnf), nesting)
    return SafeGrammar(JSON_OBJECT_GBNF, _object(), "schema too large for a grammar: any JSON object")


def _grammar_size(schema: Any) -> int:
    """About how many characters of GBNF the converter writes for a reduced schema (a bounded walk:
    the reduced schema has at most ``nodes`` nodes). Each optional repetition costs ~8 characters."""
    if not isinstance(schema, dict):
        return 16
    nested = [v for k in ("anyOf", "prefixItems") for v in schema.get(k, [])]
    nested += list((schema.get("properties") or {}).values())
    nested += [schema[k] for k in ("items", "additionalProperties") if isinstance(schema.get(k), dict)]
    high = int(schema.get("maxLength") or schema.get("maxItems") or 0)
    return 64 + 8 * high + 24 * len(schema.get("enum", ())) + sum(_grammar_size(n) for n in nested)


def gbnf_nesting(gbnf: str) -> int:
    """The deepest group nesting in ``gbnf``: how deep llama.cpp's grammar parser will recurse."""
    parens = re.findall(r"[()]", _LITERAL_OR_CLASS.sub("", gbnf))
    return max(accumulate(1 if p == "(" else -1 for p in parens), default=0)


def safe_schema(schema: object, limits: GrammarLimits = TIERS[0]) -> dict[str, Any]:
    """``schema`` reduced to what the converter and llama.cpp take within ``limits`` (never raises).

    Deterministic: the same schema gives the same result. A root that allows any value (or is no
    schema at all) becomes any object: the embedded model answers JSON objects.
    """
    try:
        out = _Reducer(schema, limits).node(schema, 0, 1)
    except Exception:  # hostile input (a dict subclass that raises, a RecursionError): any object
        log.warning("could not reduce a JSON schema; using any JSON object", exc_info=True)
        return _object()
    return _object() if out == _any() else out


def _any() -> dict[str, Any]:
    """Any JSON value (``{}`` would not do: the converter reads it as any object)."""
    return {"anyOf": [{"type": t} for t in ("object", "array", "string", "number", "boolean", "null")]}


def _object() -> dict[str, Any]:
    return {"type": "object"}


def _int(value: object, cap: int) -> int | None:
    """A bound as an int in [0, cap]; None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return max(0, min(cap, int(value)))


def _literal(value: object, limits: GrammarLimits) -> str | None:
    """``value`` as compact JSON when the converter can write it as a grammar literal, else None.

    The converter escapes quotes but not backslashes, so JSON text holding an escape (a quote, a
    backslash, a control character) gives a literal llama.cpp rejects or misreads; characters
    beyond the BMP become surrogate escapes no model output can match. Both are refused here.
    """
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None
    if len(text) > limits.literal_chars or "\\" in text or any(not _plain(c) for c in text):
        return None
    return text


def _plain(char: str) -> bool:
    code = ord(char)
    return 0x20 <= code < 0xD800 or 0xE000 <= code < 0x10000


def _name_ok(name: object, limits: GrammarLimits) -> bool:
    """A property name the converter writes correctly (see ``_literal``) and of a bounded length."""
    return isinstance(name, str) and 0 < len(name) <= limits.name_chars and _literal(name, limits) is not None


def _seq(value: object, cap: int) -> list[Any]:
    return list(islice(value, cap)) if isinstance(value, list | tuple) else []


class _Reducer:
    """One reduction: the root (for ``$ref``), the limits and the nodes still to spend."""

    def __init__(self, root: object, limits: GrammarLimits) -> None:
        self._root = root
        self._limits = limits
        self._nodes = limits.nodes

    def node(self, schema: object, depth: int, fanout: int) -> dict[str, Any]:
        """``schema`` reduced; ``depth`` levels and ``fanout`` alternatives above it."""
        self._nodes -= 1
        if not isinstance(schema, dict):
            return _any()  # true, false or garbage: any value (false cannot be said in a grammar)
        if depth >= self._limits.depth or self._nodes <= 0:
            return self._shallow(schema)
        schema = self._merged(self._deref(schema, depth), depth)
        if isinstance(schema.get("anyOf"), list | tuple) or isinstance(schema.get("oneOf"), list | tuple):
            return self._any_of(schema, depth, fanout)
        kind = schema.get("type")
        if isinstance(kind, list | tuple):
            kinds = [k for k in dict.fromkeys(k for k in kind if isinstance(k, str)) if k in _TYPES]
            return self._choice([{**schema, "type": k} for k in kinds], depth, fanout)
        if "const" in schema and (text := _literal(schema["const"], self._limits)) is not None:
            return {"const": json.loads(text)}
        if (values := self._enum(schema.get("enum"), fanout)) is not None:
            return {"enum": values}
        return self._typed(schema, kind if isinstance(kind, str) else _inferred(schema), depth, fanout)

    def _typed(self, schema: dict[str, Any], kind: str | None, depth: int, fanout: int) -> dict[str, Any]:
        if kind == "object":
            return self._object(schema, depth, fanout)
        if kind == "array":
            return self._array(schema, depth, fanout)
        if kind == "string":
            return self._string(schema)
        if kind in ("number", "integer", "boolean", "null"):
            return {"type": kind}
        return _any()

    def _shallow(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The same kind of value, unconstrained: what is left when depth or nodes run out."""
        kind = schema.get("type") if isinstance(schema.get("type"), str) else _inferred(schema)
        return {"type": kind} if kind in _TYPES else _any()

    def _deref(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """A local ``$ref`` replaced by its target (each hop costs a level, so cycles end)."""
        hops = depth
        while isinstance(ref := schema.get("$ref"), str) and hops < self._limits.depth:
            hops += 1
            target = _pointer(self._root, ref)
            if not isinstance(target, dict):
                return {k: v for k, v in schema.items() if k != "$ref"}
            schema = target
        return schema if "$ref" not in schema else {}  # a cycle or too many hops: any value

    def _merged(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """``allOf`` folded into one schema: properties and required joined, other keys first wins."""
        parts = _seq(schema.get("allOf"), self._limits.branches)
        if not parts:
            return schema
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        properties: dict[str, Any] = dict(merged["properties"]) if isinstance(merged.get("properties"), dict) else {}
        required: list[Any] = list(_seq(merged.get("required"), self._limits.properties))
        for part in parts:
            if not isinstance(part, dict):
                continue
            part = self._deref(part, depth)
            more = part.get("properties")
            for name, value in more.items() if isinstance(more, dict) else ():
                properties.setdefault(name, value)
            required += _seq(part.get("required"), self._limits.properties)
            for key, value in part.items():
                if key not in ("allOf", "properties", "required", "$ref"):
                    merged.setdefault(key, value)
        if properties:
            merged["properties"] = properties
        if required:
            merged["required"] = required
        return merged

    def _any_of(self, schema: dict[str, Any], depth: int, fanout: int) -> dict[str, Any]:
        raw = schema["anyOf"] if isinstance(schema.get("anyOf"), list | tuple) else schema["oneOf"]
        return self._choice(_seq(raw, self._limits.branches), depth, fanout)

    def _choice(self, options: list[Any], depth: int, fanout: int) -> dict[str, Any]:
        """At most as many branches as the fan-out left allows; one branch is that branch."""
        options = options[: max(1, self._limits.fanout // fanout)]
        if not options:
            return _any()
        branches = [self.node(o, depth + 1, fanout * len(options)) for o in options]
        unique = list({json.dumps(b, sort_keys=True): b for b in branches}.values())
        return unique[0] if len(unique) == 1 else {"anyOf": unique}

    def _enum(self, raw: object, fanout: int) -> list[Any] | None:
        cap = min(self._limits.enum_values, max(1, self._limits.fanout // fanout))
        texts: dict[str, None] = {}
        for value in _seq(raw, self._limits.enum_values * 4):
            if (text := _literal(value, self._limits)) is not None:
                texts[text] = None
            if len(texts) >= cap:
                break
        return [json.loads(t) for t in texts] or None

    def _object(self, schema: dict[str, Any], depth: int, fanout: int) -> dict[str, Any]:
        raw = schema.get("properties")
        properties: dict[str, Any] = {}
        if isinstance(raw, dict):
            names = (k for k in raw if _name_ok(k, self._limits))
            for name in islice(names, self._limits.properties):
                properties[name] = self.node(raw[name], depth + 1, fanout)
        extra = schema.get("additionalProperties", True)
        if not properties and extra is True:
            return _object()
        wanted = _seq(schema.get("required"), self._limits.properties * 4)
        required = [k for k in wanted if isinstance(k, str) and k in properties]
        out: dict[str, Any] = {"type": "object", "properties": properties, "required": list(dict.fromkeys(required))}
        if extra is False or isinstance(extra, dict):
            out["additionalProperties"] = False if extra is False else self.node(extra, depth + 1, fanout)
        else:
            out["additionalProperties"] = True
        return out

    def _array(self, schema: dict[str, Any], depth: int, fanout: int) -> dict[str, Any]:
        limits = self._limits
        if isinstance(schema.get("prefixItems"), list | tuple):  # a tuple: exactly these items, in order
            items = _seq(schema["prefixItems"], limits.tuple_items)
            return {"type": "array", "prefixItems": [self.node(i, depth + 1, fanout) for i in items]}
        if schema.get("items") is False:
            return {"type": "array", "prefixItems": []}
        low = _int(schema.get("minItems"), limits.array_items) or 0
        high = _int(schema.get("maxItems"), limits.array_items)
        if "items" not in schema or schema["items"] is True:
            if not low and high is None:
                return {"type": "array"}
            item: dict[str, Any] = _any()
        else:
            item = self.node(schema["items"], depth + 1, fanout)
        out: dict[str, Any] = {"type": "array", "items": item, "minItems": low}
        if high is not None:
            out["maxItems"] = max(low, high)
        return out

    def _string(self, schema: dict[str, Any]) -> dict[str, Any]:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return {"type": "string", "format": fmt}
        low = _int(schema.get("minLength"), self._limits.string_chars) or 0
        high = _int(schema.get("maxLength"), self._limits.string_chars)
        if high is None and not low:
            return {"type": "string"}
        high = self._limits.string_chars if high is None else max(low, high)
        return {"type": "string", "minLength": low, "maxLength": high}


def _inferred(schema: dict[str, Any]) -> str | None:
    """The type a schema without ``type`` means, from its keywords."""
    keys = set(schema)
    if keys & {"properties", "additionalProperties", "required"}:
        return "object"
    if keys & {"items", "prefixItems", "minItems", "maxItems"}:
        return "array"
    if keys & {"minLength", "maxLength", "pattern", "format"}:
        return "string"
    if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
        return "number"
    return None


def _pointer(root: object, ref: str) -> object:
    """The target of a local JSON pointer ``#/a/b`` in ``root``; None when it is not there."""
    if not ref.startswith("#"):
        return None  # remote references are never fetched
    target = root
    for part in _parts(ref[1:]):
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list | tuple) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


def _parts(pointer: str) -> Iterator[str]:
    for part in islice(pointer.split("/")[1:], 32):
        yield part.replace("~1", "/").replace("~0", "~")


__all__ = ["JSON_OBJECT_GBNF", "TIERS", "GrammarLimits", "SafeGrammar", "gbnf_nesting", "safe_grammar", "safe_schema"]
