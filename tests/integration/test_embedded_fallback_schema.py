"""The real embedded model takes the cloud request's schema (issue 14 item 7) and any input without dying.

Everything runs in a child process: before the fix the process died with SIGSEGV, which here is a
failed test with the exit code, not a dead pytest. About ten seconds on two cores.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[2]

_SCRIPT = r"""
import json, math, sys, threading
from factory.errors import RoutingError
from routing.embedded import EmbeddedModel, default_model_path
from routing.grammar_sampling import CheckedGrammarLlama, GrammarRejected
from teams.roster import team
from teams.schema import SchemaBounds, response_schema

report = {}
model = EmbeddedModel(n_ctx=2048)
messages = [
    {"role": "system", "content": "You are the business analysis team. Answer with one JSON object."},
    {"role": "user", "content": "A tiny notes app."},
]
tools = ("recall", "write_artifact", "request_clarification")
cloud = response_schema(team("business-analysis"), SchemaBounds(), tools=tools)

def call(**kw):
    done = model.complete(messages, **{"json_schema": cloud, "max_tokens": 48, "temperature": 0.2, **kw})
    return {"text": done.text, "tokens_out": done.tokens_out}

# LiteLLM calls from a worker thread; this one has a small stack, as some platforms' threads do.
threading.stack_size(256 * 1024)
worker = threading.Thread(target=lambda: report.update(cloud=call()))
worker.start()
worker.join()
report["plain"] = call(json_schema=None, max_tokens=8)
report["odd_params"] = call(max_tokens=0, temperature=math.nan)
report["hostile_schema"] = call(json_schema={"type": "string", "pattern": "^a{0,30000}$", "maxLength": 10**9})
try:
    model.complete([{"role": "user", "content": "word " * 5000}], json_schema=cloud, max_tokens=8, temperature=0.2)
except RoutingError as exc:
    report["long_prompt"] = str(exc)
model.close()

llama = CheckedGrammarLlama(model_path=str(default_model_path()), n_ctx=256, verbose=False)
from llama_cpp import LlamaGrammar
for name, kw in (("checked", {}), ("stock_path", {"mirostat_mode": 2})):
    try:
        llama.create_completion("Hi", max_tokens=2, grammar=LlamaGrammar.from_string("root ::= undefined-rule"), **kw)
    except GrammarRejected as exc:
        report[f"rejected_{name}"] = str(exc)
llama.close()
print(json.dumps(report), flush=True)
"""


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def test_the_embedded_model_answers_the_full_cloud_schema_and_refuses_bad_input_with_exceptions() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_no_core_dump,
    )
    assert proc.returncode != -signal.SIGSEGV, "the process died (SIGSEGV): " + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # the full cloud TaskResult schema (20,000-character content) now gives a grammar-shaped answer
    assert report["cloud"]["text"].startswith("{") and report["cloud"]["tokens_out"] == 48
    assert report["plain"]["text"] and report["plain"]["tokens_out"] <= 8
    assert report["odd_params"]["tokens_out"] == 1  # max_tokens 0 is one token, NaN temperature greedy
    assert report["hostile_schema"]["text"].startswith('"')  # a plain string grammar, the pattern dropped
    assert "does not fit the embedded model's context" in report["long_prompt"]
    assert "FACTORY_LOCAL_MODEL_CTX" in report["long_prompt"]
    assert "rejected the grammar" in report["rejected_checked"]
    assert "rejected the grammar" in report["rejected_stock_path"]
