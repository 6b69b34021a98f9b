"""A fake model provider on loopback: an OpenAI-compatible API and Ollama's API, with scripted failures.

Routing is proven against real HTTP, through the real LiteLLM code path, not a fake router: this
server answers what a provider answers (valid completions carrying the JSON that was asked for) and
fails the ways providers fail (429 with Retry-After, 500, a hang, a dropped connection, a non-JSON
body, a rejected ``json_schema``, an error echoing the caller's key). It runs an aiohttp server on an
event loop of its own in a background thread, so synchronous tests, ``asyncio`` tests and the code
under test all reach it alike.

Behaviour of model calls (``POST /v1/chat/completions``, ``/api/chat``, ``/api/generate``): the next
queued one-shot behaviour (:meth:`FakeProvider.push`), else :attr:`FakeProvider.default`. Metadata
endpoints (``/v1/models``, ``/api/tags``, ``/api/show``, ``/api/version``) always answer; a
provider that is "down" is one that was stopped (its port then refuses connections).

Streamed calls (``"stream": true``): ``ok`` sends the answer as one content chunk; ``trickle`` sends
it word by word, ``chunk_s`` apart; ``drop_mid_stream`` sends the first two words, then drops the
connection; ``stall_mid_stream`` sends them, then goes silent (``hang_s``); ``no_usage`` answers like
``ok`` but reports no token usage. Unstreamed, ``trickle`` and ``no_usage`` answer like ``ok`` (the
latter without usage), ``drop_mid_stream`` like ``close`` and ``stall_mid_stream`` like ``hang``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import pytest
from aiohttp import web

from routing.base import ChatRequest, Message
from routing.scripted import scripted_answer

Behaviour = Literal[
    "ok", "rate_limit", "error_500", "hang", "close", "garbage", "reject_json_schema", "echo_key_error", "off_schema",
    "trickle", "drop_mid_stream", "stall_mid_stream", "no_usage",
]  # fmt: skip
#: Streamed chunks sent before ``drop_mid_stream`` drops the connection or ``stall_mid_stream`` stalls.
CHUNKS_BEFORE_BREAK = 2
BEHAVIOURS: tuple[str, ...] = get_args(Behaviour)
OLLAMA_VERSION = "0.12.3"
_FENCED_JSON = re.compile(r"```json[ \t]*\n(.*?)```", re.DOTALL)
_SCHEMA_KEYS = ("type", "properties", "anyOf", "oneOf", "$defs", "$schema", "items")


@dataclass(frozen=True)
class Seen:
    """One request as it arrived. ``headers`` keys are lower-case; ``at`` is ``time.monotonic()``."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or None when there was none or it was not JSON
    raw: bytes
    at: float


# ---------------------------------------------------------------------------------------- answers


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _messages(body: dict[str, Any]) -> list[Message]:
    """The request's messages as the factory's ``Message`` (roles it does not know read as user)."""
    found = [
        Message(role=cast(Any, m["role"]) if m.get("role") in ("system", "assistant") else "user",
                content=_text_of(m.get("content")))
        for m in body.get("messages") or [] if isinstance(m, dict)
    ]  # fmt: skip
    if not found and isinstance(body.get("prompt"), str):  # Ollama's /api/generate
        found = [Message(role="user", content=body["prompt"])]
    return found or [Message(role="user", content="")]


def embedded_schema(messages: list[Message]) -> dict[str, Any] | None:
    """The JSON schema a prompt carries in its last fenced json block (JSON mode plus the schema in
    the prompt), or None when there is none."""
    for block in reversed(_FENCED_JSON.findall("\n".join(m.content for m in messages))):
        try:
            schema = json.loads(block)
        except ValueError:
            continue
        if isinstance(schema, dict) and any(key in schema for key in _SCHEMA_KEYS):
            return schema
    return None


def json_answer(messages: list[Message], schema: dict[str, Any] | None) -> str:
    """Valid JSON for ``schema`` (a COMPLETE TaskResult for a result schema), else ``{"ok": true}``."""
    if schema is None:
        return json.dumps({"ok": True})
    return json.dumps(scripted_answer(ChatRequest(alias="factory/fast", messages=messages, json_schema=schema)))


def asked_for(body: dict[str, Any], *, ollama: bool) -> tuple[bool, dict[str, Any] | None]:
    """Whether a request asks for JSON, and the schema it gives (OpenAI's ``response_format``,
    Ollama's ``format``: a schema or ``"json"``)."""
    if ollama:
        fmt = body.get("format")
        return fmt == "json" or isinstance(fmt, dict), fmt if isinstance(fmt, dict) else None
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) and kind == "json_schema" else None
    return kind in ("json_schema", "json_object"), schema if isinstance(schema, dict) else None


def answer_text(body: dict[str, Any], messages: list[Message], *, ollama: bool) -> str:
    """What an obliging model answers: JSON when JSON was asked for (an instance of the schema given
    with the request or in the prompt), else a line of plain text."""
    wants_json, schema = asked_for(body, ollama=ollama)
    if wants_json:
        return json_answer(messages, schema if schema is not None else embedded_schema(messages))
    return f"Fake answer from {body.get('model')} to: {messages[-1].content[:80]}"


def _object(seen: Seen) -> dict[str, Any]:
    """The request's JSON body when it is an object, else an empty one."""
    return seen.body if isinstance(seen.body, dict) else {}


def _tokens(messages: list[Message], text: str) -> tuple[int, int]:
    """Prompt and completion tokens, estimated at four characters a token."""
    return max(1, sum(len(m.content) for m in messages) // 4), max(1, len(text) // 4)


def _error(status: int, message: str, kind: str, *, ollama: bool, **headers: str) -> web.Response:
    """A provider's error in Ollama's shape (``{"error": text}``) or OpenAI's (``{"error": {...}}``)."""
    codes = {429: "rate_limit_exceeded", 500: "internal_error"}
    error = message if ollama else {"message": message, "type": kind, "param": None, "code": codes.get(status)}
    return web.json_response({"error": error}, status=status, headers=headers or None)


# ---------------------------------------------------------------------------------------- server


class FakeProvider:
    """An OpenAI-compatible and Ollama-compatible server on ``127.0.0.1`` (a free port), scripted.

    ``with FakeProvider() as fake:`` starts it; ``fake.url`` is the OpenAI base (``…/v1``),
    ``fake.ollama_url`` the Ollama base. ``fake.push("rate_limit", "ok")`` queues one-shot
    behaviours; ``fake.default`` answers when the queue is empty. Every request is kept in
    ``fake.requests``.
    """

    def __init__(
        self,
        *,
        default: Behaviour = "ok",
        latency_s: float = 0.0,
        retry_after_s: int = 1,
        hang_s: float = 600.0,
        chunk_s: float = 0.05,
        models: Sequence[str] = ("test-model",),
        ollama_models: Sequence[str] = ("qwen2.5:0.5b",),
        start_timeout_s: float = 10.0,
    ) -> None:
        self.default = default
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.chunk_s = chunk_s  # between the chunks of a ``trickle`` stream
        self.models = list(models)
        self.ollama_models = list(ollama_models)
        self._start_timeout_s = start_timeout_s
        self._queue: deque[Behaviour] = deque()
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self.port = 0

    # -- script and record --------------------------------------------------------------------

    @property
    def default(self) -> Behaviour:
        return self._default

    @default.setter
    def default(self, behaviour: Behaviour) -> None:
        self._default = self._checked(behaviour)

    @staticmethod
    def _checked(behaviour: str) -> Behaviour:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown fake provider behaviour {behaviour!r}; use one of {', '.join(BEHAVIOURS)}")
        return behaviour  # type: ignore[return-value]  # checked just above

    def push(self, *behaviours: Behaviour) -> None:
        """Queue one-shot behaviours for the next model calls, in order."""
        checked = [self._checked(b) for b in behaviours]
        with self._lock:
            self._queue.extend(checked)

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self._default

    @property
    def requests(self) -> list[Seen]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._seen)

    def count(self, path: str | None = None) -> int:
        """How many requests arrived (at ``path``, e.g. ``/v1/chat/completions``, if given)."""
        with self._lock:
            return sum(1 for s in self._seen if path is None or s.path == path)

    def reset(self) -> None:
        """Forget recorded requests and queued behaviours (the default stays)."""
        with self._lock:
            self._seen.clear()
            self._queue.clear()

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL, as ``api_base`` of ``openai/…`` or ``hosted_vllm/…``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ollama_url(self) -> str:
        """The Ollama base URL, as ``api_base`` of ``ollama_chat/…`` or the ``ollama`` client's host."""
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> FakeProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen on a free loopback port, serving from a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("this FakeProvider is already started; make another one for a second server")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fake-provider:{self.port}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop).result(self._start_timeout_s)

    async def _serve(self, sock: socket.socket) -> None:
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("/v1", ""):  # an api_base given without /v1 still reaches the OpenAI routes
            app.router.add_post(f"{prefix}/chat/completions", self._openai_chat)
            app.router.add_get(f"{prefix}/models", self._openai_models)
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/api/generate", self._ollama_chat)
        app.router.add_get("/api/tags", self._ollama_tags)
        app.router.add_post("/api/show", self._ollama_show)
        app.router.add_get("/api/version", self._ollama_version)
        app.router.add_get("/", self._ollama_root)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        """Stop serving: hanging calls are released (their connection dropped), the port closed."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    async def _shutdown(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- request plumbing -----------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Seen:
        at = time.monotonic()
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        seen = Seen(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body, raw, at)
        with self._lock:
            self._seen.append(seen)
        return seen

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the server is stopping; True when it is."""
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection without an answer (aiohttp then cannot write the returned response)."""
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)

    async def _behaviour(self, request: web.Request) -> Behaviour | None:
        """This model call's behaviour, after the fixed latency (None: the server stopped meanwhile)."""
        if self.latency_s and await self._wait(self.latency_s):
            return None
        return self._next()

    async def _failure(
        self, request: web.Request, body: dict[str, Any], ollama: bool, behaviour: Behaviour | None
    ) -> web.Response | None:
        """The failing answer this model call gets from its behaviour, or None when it is answered."""
        if behaviour is None:
            return self._drop(request)
        model = body.get("model")
        streamed = bool(body.get("stream")) and not ollama
        if behaviour == "drop_mid_stream" and not streamed:
            behaviour = "close"
        if behaviour == "stall_mid_stream" and not streamed:
            behaviour = "hang"
        if behaviour == "rate_limit":
            message = f"Rate limit reached for {model}. Please try again in {self.retry_after_s}s."
            return _error(429, message, "requests", ollama=ollama, **{"Retry-After": str(self.retry_after_s)})
        if behaviour == "error_500":
            return _error(500, "The server had an error while processing your request.", "server_error", ollama=ollama)
        if behaviour == "echo_key_error":
            message = f"upstream refused the credentials {request.headers.get('Authorization', '')!r} for {model}"
            return _error(500, message, "server_error", ollama=ollama)
        if behaviour == "reject_json_schema" and asked_for(body, ollama=ollama)[1] is not None:
            message = "response_format json_schema is not supported by this model"
            return _error(400, message, "invalid_request_error", ollama=ollama)
        if behaviour == "hang":
            await self._wait(self.hang_s)
            return self._drop(request)
        if behaviour == "close":
            return self._drop(request)
        if behaviour == "garbage":
            return web.Response(text="<html>502 Bad Gateway</html>\n{not json", content_type="application/json")
        if behaviour == "off_schema" and not ollama:  # a well-formed answer a team cannot use (gate: retry)
            usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
            choice = {"index": 0, "message": {"role": "assistant", "content": '{"unexpected": true}'},
                      "finish_reason": "stop"}  # fmt: skip
            return web.json_response({"id": "chatcmpl-off", "object": "chat.completion", "created": int(time.time()),
                                      "model": model, "choices": [choice], "usage": usage})  # fmt: skip
        return None

    # -- OpenAI-compatible ----------------------------------------------------------------------

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = _object(await self._record(request))
        behaviour = await self._behaviour(request)
        failed = await self._failure(request, body, ollama=False, behaviour=behaviour)
        if failed is not None:
            return failed
        if not body.get("messages"):
            return _error(400, "'messages' is a required property", "invalid_request_error", ollama=False)
        messages, model = _messages(body), body.get("model")
        text = answer_text(body, messages, ollama=False)
        prompt, completion = _tokens(messages, text)
        usage: dict[str, int] | None = {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion
        }  # fmt: skip
        if behaviour == "no_usage":
            usage = None
        ident, created = f"chatcmpl-fake{self.count()}", int(time.time())
        if body.get("stream"):
            return await self._openai_stream(request, body, ident, created, text, usage, behaviour)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                  "logprobs": None}  # fmt: skip
        answer = {
            "id": ident, "object": "chat.completion", "created": created, "model": model, "choices": [choice],
            "usage": usage, "system_fingerprint": None,
        }  # fmt: skip
        if usage is None:
            del answer["usage"]
        return web.json_response(answer)

    async def _openai_stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        ident: str,
        created: int,
        text: str,
        usage: dict[str, int] | None,
        behaviour: Behaviour | None = "ok",
    ) -> web.StreamResponse:
        """The answer as server-sent events: the content (one chunk, or word by word for ``trickle``
        and the breaking behaviours), a finish chunk, usage if asked, [DONE]."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.get("model")}
        words = [text] if behaviour in ("ok", "no_usage") else re.split(r"(?<=\s)(?=\S)", text)
        chunks: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": words[0]},
                                  "finish_reason": None}]},
            *({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words[1:]),
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]  # fmt: skip
        if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for sent, chunk in enumerate(chunks):
            if behaviour in ("drop_mid_stream", "stall_mid_stream") and sent == CHUNKS_BEFORE_BREAK:
                if behaviour == "stall_mid_stream":
                    await self._wait(self.hang_s)
                self._drop(request)
                return response
            if behaviour == "trickle" and sent:
                await self._wait(self.chunk_s)
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _openai_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    # -- Ollama ---------------------------------------------------------------------------------

    def _pulled(self, name: str) -> str | None:
        """The pulled model ``name`` means (Ollama reads a name without a tag as ``:latest``)."""
        wanted = name if ":" in name else f"{name}:latest"
        return next((m for m in self.ollama_models if wanted in (m, m if ":" in m else f"{m}:latest")), None)

    @staticmethod
    def _ollama_entry(name: str) -> dict[str, Any]:
        digest = hashlib.sha256(name.encode()).hexdigest()
        family = name.split(":")[0].rstrip("0123456789.") or "llama"
        return {
            "name": name, "model": name, "modified_at": "2026-01-15T10:20:30.123456789Z", "size": 397821319,
            "digest": digest,
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "494.03M", "quantization_level": "Q4_K_M"},
        }  # fmt: skip

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        body = _object(await self._record(request))
        failed = await self._failure(request, body, ollama=True, behaviour=await self._behaviour(request))
        if failed is not None:
            return failed
        model = str(body.get("model") or "")
        if self._pulled(model) is None:
            return web.json_response({"error": f'model "{model}" not found, try pulling it first'}, status=404)
        messages = _messages(body)
        text = answer_text(body, messages, ollama=True)
        prompt, completion = _tokens(messages, text)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        generate = request.path == "/api/generate"
        content = {"response": text} if generate else {"message": {"role": "assistant", "content": text}}
        done = {
            "model": model, "created_at": now, **content, "done": True, "done_reason": "stop",
            "total_duration": 1_000_000, "load_duration": 100_000, "prompt_eval_count": prompt,
            "prompt_eval_duration": 200_000, "eval_count": completion, "eval_duration": 700_000,
        }  # fmt: skip
        if not body.get("stream", True):  # Ollama streams unless told not to
            return web.json_response(done)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        empty = {"response": ""} if generate else {"message": {"role": "assistant", "content": ""}}
        first = {"model": model, "created_at": now, **content, "done": False}
        for line in (first, {**done, **empty}):
            await response.write(json.dumps(line).encode() + b"\n")
        await response.write_eof()
        return response

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"models": [self._ollama_entry(m) for m in self.ollama_models]})

    async def _ollama_show(self, request: web.Request) -> web.Response:
        body = _object(await self._record(request))
        name = str(body.get("model") or body.get("name") or "")
        pulled = self._pulled(name)
        if pulled is None:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        entry = self._ollama_entry(pulled)
        family = entry["details"]["family"]
        return web.json_response({
            "license": "", "modelfile": f"FROM {pulled}\n", "parameters": "stop \"<|im_end|>\"",
            "template": "{{ if .Tools }}tools{{ end }}{{ .Prompt }}", "details": entry["details"],
            "model_info": {"general.architecture": family, f"{family}.context_length": 32768},
            "capabilities": ["completion", "tools"], "modified_at": entry["modified_at"],
        })  # fmt: skip

    async def _ollama_version(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"version": OLLAMA_VERSION})

    async def _ollama_root(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="Ollama is running")


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_provider() -> Iterator[FakeProvider]:
    """A started fake provider (default behaviour ``ok``), stopped after the test."""
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake_providers() -> Iterator[Callable[..., list[FakeProvider]]]:
    """A factory: ``fake_providers(2, default="error_500")`` gives that many independent, started
    providers on ports of their own (one can be down while another answers); all stopped afterwards."""
    opened: list[FakeProvider] = []

    def make(n: int = 2, **options: Any) -> list[FakeProvider]:
        if not 1 <= n <= 16:
            raise ValueError(f"fake_providers(n) makes 1 to 16 providers, not {n}")
        made = [FakeProvider(**options) for _ in range(n)]
        for fake in made:
            opened.append(fake)
            fake.start()
        return made

    yield make
    for fake in opened:
        fake.stop()
