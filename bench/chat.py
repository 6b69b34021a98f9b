"""The chat's live view in a real browser: event → DOM latency, UI updates per second, and
``factory up`` start-up. Prints JSON.

Everything runs as an operator would see it (issue 15, Benchmark): an embedded PostgreSQL with
pgvector, the machine's Redis under a key prefix of its own, ``factory up`` (the chat and a worker)
on the scripted model, and Debian's chromium driven by Playwright.

- Event → DOM: one run submitted through the chat with the pipeline picked in its settings panel
  (``--stages full``: 17 stages). A MutationObserver, installed before the page's own scripts,
  records ``Date.now()`` the first time each step title (``3. api-design · running``) appears in
  the DOM; after the run every ``stage.started`` / ``stage.completed`` of the Redis event stream is
  matched to its title by the event's ``at`` (same machine, same wall clock). A stage can go from
  running to complete within one redraw, so its ``running`` title is never drawn: that start is
  *coalesced* (its completion shows it), not lost; a completion never drawn is *lost*. Goals: p50
  ≤ 100 ms, p95 ≤ 250 ms, nothing lost. The scripted model answers after ``--latency-s`` so stages
  are apart. Beside it: the same latency split where the step's frame reached the page (the
  server's part, the page's part), and completions timed from the stage's committed record
  (``finished_at``) rather than from their event, which the engine emits later (after the audit
  entries and memory retention).
- Updates per second: every socket.io frame the page receives, timestamped in the page (a listener
  on each WebSocket; Playwright's own ``framereceived`` reaches Python only when it is polled, so
  it serves as a count to cross-check, not a clock). Step and message updates (``new_message``,
  ``update_message``, ...) are bucketed per second from the submission to the last update of the
  run, empty seconds included. Goal: at most 20 a second.
- Start-up: ``factory up`` against the already running services, from process start to the first
  HTTP 200 on ``/`` (polled every 20 ms), ``--repeat-up`` times; each stopped with SIGTERM to its
  process group. Goal: median ≤ 5 s.

    python -m bench.chat [--stages full|phase1] [--latency-s 0.3] [--repeat-up 3]

Needs the dev dependencies (Playwright) and chromium at /usr/bin/chromium (``apt-get install
chromium``); nothing downloads a browser.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis

from bench.stats import pct
from factory import services

FACTORY = str(Path(sys.executable).with_name("factory"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
USER, PASSWORD = "bench", "bench-chat-secret"
REQUIREMENT = "Build a URL shortener service with an HTTP API: create short links, redirect, and count clicks."
GOALS: dict[str, float] = {
    "event_to_dom_p50_ms": 100.0,
    "event_to_dom_p95_ms": 250.0,
    "events_lost": 0,
    "message_updates_per_second_max": 20.0,
    "up_to_first_page_median_s": 5.0,
}
#: The socket.io events that add or change a step or message in the page.
MESSAGE_EVENTS = frozenset({"new_message", "update_message", "delete_message", "stream_start", "send_token"})
_STATUS = "running|complete|needs clarification|blocked|waiting human|failed|skipped|pending"
#: A step title as ``chat.render.stage_title`` writes it.
TITLE = re.compile(rf"(\d+)\. ([a-z0-9][a-z0-9-]*) · ({_STATUS})")
_FRAME = re.compile(r'^42(?:/[^,\[]*,)?\d*\[\s*"([^"]+)"')
_NAME = re.compile(r'"name":"((?:[^"\\]|\\.)*)"')

#: Installed before the page's own scripts: first DOM time of every step title and of the run's
#: end line, and every WebSocket frame with the time the page got it.
RECORDER_JS = """
(() => {
  if (window.__bench) return;
  const rec = (window.__bench = { dom: {}, end: null, frames: [] });
  const TITLE = new RegExp(__TITLE__, "g");
  const END = /Run (complete|failed|cancelled)\\./;
  const scan = (node, now) => {
    const text = node && node.textContent;
    if (!text) return;
    for (const m of text.matchAll(TITLE)) if (!(m[0] in rec.dom)) rec.dom[m[0]] = now;
    if (rec.end === null && END.test(text)) rec.end = now;
  };
  new MutationObserver((mutations) => {
    const now = Date.now();
    for (const m of mutations) scan(m.type === "characterData" ? m.target.parentNode : m.target, now);
  }).observe(document, { childList: true, subtree: true, characterData: true });
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) =>
        rec.frames.push([Date.now(), typeof e.data === "string" ? e.data.slice(0, 200) : "<binary>"]));
    }
  };
})();
""".replace("__TITLE__", json.dumps(TITLE.pattern))


@dataclass(frozen=True)
class Options:
    stages: str = "full"
    latency_s: float = 0.3
    repeat_up: int = 3
    run_timeout_s: float = 180.0
    redis_url: str = "redis://127.0.0.1:6379/0"

    def check(self) -> None:
        if self.stages not in ("full", "phase1"):
            raise SystemExit("--stages takes full or phase1")
        if not (0.0 <= self.latency_s <= 10 and 0 <= self.repeat_up <= 20 and 10 <= self.run_timeout_s <= 3600):
            raise SystemExit("--latency-s takes 0..10, --repeat-up 0..20, --run-timeout-s 10..3600")


# ------------------------------------------------------------------------------- pure helpers


def summary(samples_ms: list[float]) -> dict[str, float | None]:
    if not samples_ms:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None, "min_ms": None}
    return {
        "n": len(samples_ms),
        "p50_ms": round(statistics.median(samples_ms), 1),
        "p95_ms": round(pct(samples_ms, 0.95), 1),
        "max_ms": round(max(samples_ms), 1),
        "min_ms": round(min(samples_ms), 1),
    }


@dataclass(frozen=True)
class StageEvent:
    """A ``stage.started`` or ``stage.completed`` of the event stream."""

    kind: str  # started | completed
    stage: int
    team: str
    at_ms: float

    def title(self, status: str | None = None) -> str:
        return f"{self.stage + 1}. {self.team} · {status or ('running' if self.kind == 'started' else 'complete')}"


def stage_events(entries: Iterable[tuple[str, Mapping[str, str]]], run_id: str) -> tuple[list[StageEvent], int]:
    """The run's stage events from XRANGE entries (``json`` field: an ``observability.Event``), the
    first of each (kind, stage) in stream order; and how many repeats were left out (a stage
    executed again)."""
    found: dict[tuple[str, int], StageEvent] = {}
    repeats = 0
    for _id, fields in entries:
        event = json.loads(fields["json"])
        kind = {"stage.started": "started", "stage.completed": "completed"}.get(event["type"])
        if kind is None or event["run_id"] != run_id:
            continue
        at_ms = datetime.fromisoformat(event["at"]).timestamp() * 1000
        key = (kind, int(event["data"]["stage"]))
        if key in found:
            repeats += 1
            continue
        found[key] = StageEvent(kind, key[1], str(event["data"]["team"]), at_ms)
    return list(found.values()), repeats


def match(
    events: list[StageEvent], dom: Mapping[str, float], arrived: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Each event against the first DOM time of its title: latencies, coalesced starts, losses; and,
    given when the page received each title (``arrived``), the latency split at the frame's arrival:
    the server's part (event → frame) and the page's (frame → DOM)."""
    latency: dict[str, list[float]] = {"started": [], "completed": []}
    server: list[float] = []
    page: list[float] = []
    coalesced: list[str] = []
    lost: list[str] = []
    for e in events:
        shown = dom.get(e.title())
        if shown is not None:
            latency[e.kind].append(shown - e.at_ms)
            if arrived is not None and e.title() in arrived:
                server.append(arrived[e.title()] - e.at_ms)
                page.append(shown - arrived[e.title()])
        elif e.kind == "started" and e.title("complete") in dom:
            coalesced.append(e.title())
        else:
            lost.append(e.title())
    both = latency["started"] + latency["completed"]
    return {
        "events": len(events),
        "all": summary(both),
        "started": summary(latency["started"]),
        "completed": summary(latency["completed"]),
        "event_to_frame": summary(server),
        "frame_to_dom": summary(page),
        "coalesced_running_states": len(coalesced),
        "lost": lost,
        "events_lost": len(lost),
    }


def committed_to_dom(
    rows: Iterable[tuple[int, str, datetime | None]], events: list[StageEvent], dom: Mapping[str, float]
) -> dict[str, Any]:
    """Completions measured from the stage's record instead of its event: ``rows`` are the stages'
    (index, team, finished_at), stamped just before the record is committed. The engine emits
    ``stage.completed`` only after the stage's audit entries and memory retention, so a redraw
    triggered by an earlier event of the stage can show the completion before its event exists
    (a negative event → DOM latency); this is the delay an operator actually sees."""
    finished = {(index, team): at.timestamp() * 1000 for index, team, at in rows if at is not None}
    titles = {key: f"{key[0] + 1}. {key[1]} · complete" for key in finished}
    shown = [dom[titles[key]] - ms for key, ms in finished.items() if titles[key] in dom]
    done = [e for e in events if e.kind == "completed" and (e.stage, e.team) in finished]
    after = [e.at_ms - finished[e.stage, e.team] for e in done]
    return {"completed_record_to_dom": summary(shown), "completed_event_after_record": summary(after)}


def frame_event(head: str) -> str | None:
    """The socket.io event name of a frame (``42["update_message",{...}]``); None for engine.io and
    socket.io control frames (ping ``2``, ``3probe``, connect ``40{...}``)."""
    found = _FRAME.match(head)
    return found.group(1) if found else None


def frame_title(head: str) -> str | None:
    """The step title a step frame carries as its ``name`` (JSON-escaped: ``\\u00b7``), else None."""
    found = _NAME.search(head) if frame_event(head) in ("new_message", "update_message") else None
    if found is None:
        return None
    try:
        name = json.loads(f'"{found.group(1)}"')
    except ValueError:
        return None
    return name if isinstance(name, str) and TITLE.fullmatch(name) else None


def arrivals(frames: list[tuple[float, str]]) -> dict[str, float]:
    """The time the page first received each step title."""
    first: dict[str, float] = {}
    for t, head in frames:
        title = frame_title(head)
        if title is not None and title not in first:
            first[title] = t
    return first


def per_second(times_ms: list[float], start_ms: float, end_ms: float) -> list[int]:
    """Counts per whole second from ``start_ms`` to ``end_ms`` (empty seconds included)."""
    buckets = [0] * max(1, math.ceil((end_ms - start_ms) / 1000))
    for t in times_ms:
        if start_ms <= t <= end_ms:
            buckets[min(len(buckets) - 1, int((t - start_ms) // 1000))] += 1
    return buckets


def update_rate(frames: list[tuple[float, str]], start_ms: float) -> dict[str, Any]:
    """Step/message updates per second over the run (from ``start_ms`` to its last update)."""
    named = [(t, frame_event(head)) for t, head in frames if t >= start_ms]
    updates = [t for t, name in named if name in MESSAGE_EVENTS]
    if not updates:
        return {"message_updates": 0, "per_second_max": 0, "per_second_median": 0.0, "seconds": 0}
    buckets = per_second(updates, start_ms, max(updates))
    every = per_second([t for t, _name in named], start_ms, max(t for t, _name in named))
    busiest = buckets.index(max(buckets))
    in_busiest = Counter(
        name for t, name in named if name and start_ms + busiest * 1000 <= t < start_ms + (busiest + 1) * 1000
    )
    return {
        "message_updates": len(updates),
        "seconds": len(buckets),
        "per_second_max": max(buckets),
        "per_second_median": statistics.median(buckets),
        "per_second_mean": round(len(updates) / len(buckets), 2),
        "busiest_second": {"offset_s": busiest, "frames": dict(in_busiest)},
        "all_frames_by_event": dict(Counter(name or "<control>" for _t, name in named)),
        "all_frames_per_second_max": max(every),
    }


# ------------------------------------------------------------------------------- services and processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_open(url: str) -> bool:
    try:
        with contextlib.closing(Redis.from_url(url, socket_timeout=1)) as client:
            return bool(client.ping())
    except Exception:
        return False


@contextlib.contextmanager
def factory_services(tmp: Path, redis_url: str, latency_s: float) -> Iterator[dict[str, str]]:
    """The environment of a `factory` process on an embedded PostgreSQL, Redis under a prefix of
    its own, and the scripted model; the operator account made. Everything is removed afterwards."""
    prefix = f"bench:chat:{uuid.uuid4().hex[:10]}:"
    redis = redis_url
    try:
        redis = redis_url if _redis_open(redis_url) else services.start_redis(tmp, timeout_s=30)
        script = tmp / "script.json"
        script.write_text(json.dumps({"latency_s": latency_s}))
        own = ("FACTORY_", "OPENAI_", "ANTHROPIC_", "OLLAMA_")  # nothing of this shell's factory or keys
        env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        env |= {
            "FACTORY_DATA_DIR": str(tmp / "data"),
            "FACTORY_VERIFY": "false",  # the scripted placeholders are not what this measures
            "FACTORY_DATABASE_URL": services.start_postgres(tmp),
            "FACTORY_REDIS_URL": redis,
            "FACTORY_REDIS_PREFIX": prefix,
            "FACTORY_SCRIPTED_MODEL": str(script),
            "FACTORY_WORKER_POLL_S": "0.5",
        }
        made = subprocess.run([FACTORY, "users", "add", USER, "--role", "operator"], env=env, input=PASSWORD + "\n",
                              capture_output=True, text=True, timeout=120, check=False, cwd=tmp)  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"factory users add failed: {made.stderr.strip()}")
        yield env
    finally:
        with contextlib.suppress(Exception), contextlib.closing(Redis.from_url(redis)) as client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=500))
            if keys:
                client.delete(*keys)
        services.stop(tmp)


def start_up(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    unbuffered = {**env, "PYTHONUNBUFFERED": "1"}  # its lines reach the log as it prints them
    with log.open("wb") as out:  # its own process group: the worker it starts is stopped with it
        return subprocess.Popen([FACTORY, "up", "--port", str(port)], env=unbuffered, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent)  # fmt: skip


def stop_up(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # a worker left behind in the group
        os.killpg(proc.pid, signal.SIGKILL)


#: What `factory up` prints once the services are checked and migrated (its "chat:" line comes only
#: after the server answers, so the first page is the next mark).
UP_LINES = {"services_s": "postgres: "}


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path, timeout_s: float = 90.0) -> Iterator[tuple[str, dict[str, float]]]:
    """A `factory up` on a free port: its URL and seconds from process start to the first 200 on /
    (``first_page_s``) and to the services being ready (``services_s``)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = start_up(env, port, log)
    phases: dict[str, float] = {}
    try:
        while True:
            text = log.read_text(errors="replace")
            for name, line in UP_LINES.items():
                if name not in phases and line in text:
                    phases[name] = round(time.perf_counter() - started, 2)
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/", timeout=1) as response:
                    if response.status == 200:
                        break
            if proc.poll() is not None or time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"factory up served no page within {timeout_s:.0f} s:\n{text[-3000:]}")
            time.sleep(0.02)
        phases["first_page_s"] = time.perf_counter() - started
        yield url, phases
    finally:
        stop_up(proc)


def up_to_first_page(env: dict[str, str], tmp: Path, repeats: int) -> dict[str, Any]:
    each = []
    for n in range(repeats):
        with serving(env, tmp / f"up-{n}.log") as (_url, phases):
            each.append(phases)
    if not each:
        return {"repeats": 0}
    firsts = [p["first_page_s"] for p in each]
    return {
        "repeats": repeats,
        "median_s": round(statistics.median(firsts), 2),
        "max_s": round(max(firsts), 2),
        "each": [{**p, "first_page_s": round(p["first_page_s"], 2)} for p in each],
    }


# ------------------------------------------------------------------------------- the browser run


def browser_run(url: str, stages: str, run_timeout_s: float) -> dict[str, Any]:
    """Log in, pick the pipeline in the settings panel, submit, wait for the run's end line; what
    the page recorded, Playwright's own frame count, and the submission time (ms)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit("the chat bench needs Debian's chromium at /usr/bin/chromium: apt-get install chromium")
    os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", "/nonexistent")  # never a downloaded browser
    seen: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.add_init_script(RECORDER_JS)
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: seen.append(str(payload))))
            page.goto(url + "/login")
            page.fill("#email", USER)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#chat-settings-open-modal", timeout=60_000)
            page.click("#chat-settings-open-modal")
            page.locator("#pipeline").click()
            page.get_by_role("option", name=stages, exact=True).click()
            page.get_by_role("button", name="Confirm").click()
            page.wait_for_timeout(300)  # the settings reach the session before the message
            page.locator("#chat-input").fill(REQUIREMENT)
            submitted_ms = time.time() * 1000
            page.keyboard.press("Enter")
            page.locator("text=/Run (complete|failed|cancelled)\\./").first.wait_for(timeout=run_timeout_s * 1000)
            page.wait_for_timeout(1500)  # the last redraws and the end's files
            recorded: dict[str, Any] = page.evaluate("window.__bench")
            chromium = browser.version
        finally:
            browser.close()
    return {**recorded, "submitted_ms": submitted_ms, "playwright_frames": len(seen), "chromium": chromium}


def finished_at(database_url: str, run_id: str) -> list[tuple[int, str, datetime | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT idx, team, finished_at FROM stages WHERE run_id = %s ORDER BY idx", (run_id,))
        return [(int(i), str(t), f) for i, t, f in rows.fetchall()]


def read_events(env: dict[str, str], timeout_s: float = 10.0) -> tuple[str, list[tuple[str, dict[str, str]]]]:
    """The run's id and the factory-wide event stream (waiting for the run's end event to land)."""
    deadline = time.monotonic() + timeout_s
    with contextlib.closing(Redis.from_url(env["FACTORY_REDIS_URL"], decode_responses=True)) as client:
        while True:
            entries: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
                f"{env['FACTORY_REDIS_PREFIX']}events", "-", "+"
            )
            kinds = [json.loads(fields["json"]) for _id, fields in entries]
            runs = [e["run_id"] for e in kinds if e["type"] == "run.started"]
            ended = any(e["type"] in ("run.completed", "run.failed", "run.cancelled") for e in kinds)
            if runs and ended:
                return runs[-1], entries
            if time.monotonic() > deadline:
                raise RuntimeError(f"the event stream holds no finished run: {[e['type'] for e in kinds][-10:]}")
            time.sleep(0.2)


def chat_run(env: dict[str, str], tmp: Path, options: Options) -> dict[str, Any]:
    with serving(env, tmp / "chat.log") as (url, _seconds):
        page = browser_run(url, options.stages, options.run_timeout_s)
        run_id, entries = read_events(env)
    events, repeats = stage_events(entries, run_id)
    frames = [(float(t), str(head)) for t, head in page["frames"]]
    expected = 17 if options.stages == "full" else 5
    ran = len({e.stage for e in events})
    if ran != expected:
        raise RuntimeError(f"the chat ran {ran} stages, not the {expected} of --stages {options.stages}")
    latency = match(events, page["dom"], arrivals(frames))
    latency |= committed_to_dom(finished_at(env["FACTORY_DATABASE_URL"], run_id), events, page["dom"])
    return {
        "run_id": run_id,
        "stages": expected,
        "repeated_stage_events": repeats,
        "run_wall_s": round((page["end"] - page["submitted_ms"]) / 1000, 2) if page["end"] else None,
        "event_to_dom": latency,
        "updates": {
            **update_rate(frames, page["submitted_ms"]),
            "frames_in_page": len(frames),
            "frames_seen_by_playwright": page["playwright_frames"],
        },
        "chromium": page["chromium"],
    }


# ------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "chainlit": version("chainlit"),
        "playwright": version("playwright"),
    }


def verdicts(run: dict[str, Any], up: dict[str, Any]) -> dict[str, bool | None]:
    latency, updates = run["event_to_dom"]["all"], run["updates"]
    return {
        "event_to_dom_p50_ms": latency["p50_ms"] is not None and latency["p50_ms"] <= GOALS["event_to_dom_p50_ms"],
        "event_to_dom_p95_ms": latency["p95_ms"] is not None and latency["p95_ms"] <= GOALS["event_to_dom_p95_ms"],
        "events_lost": run["event_to_dom"]["events_lost"] == GOALS["events_lost"],
        "message_updates_per_second_max": updates["per_second_max"] <= GOALS["message_updates_per_second_max"]
        and updates["frames_in_page"] == updates["frames_seen_by_playwright"],
        "up_to_first_page_median_s": up["median_s"] <= GOALS["up_to_first_page_median_s"] if "median_s" in up else None,
    }


def bench(options: Options) -> dict[str, Any]:
    """Every figure of the benchmark, the goals, and whether each is met."""
    options.check()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    try:
        with factory_services(tmp, options.redis_url, options.latency_s) as env:
            used = {"postgres": "embedded (pgvector)", "redis": env["FACTORY_REDIS_URL"].split("?")[0],
                    "redis_prefix": env["FACTORY_REDIS_PREFIX"]}  # fmt: skip
            up = up_to_first_page(env, tmp, options.repeat_up)
            run = chat_run(env, tmp, options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "machine": {**machine(), "chromium": run.pop("chromium")},
        "options": asdict(options),
        "services": used,
        "chat_run": run,
        "up_to_first_page": up,
        "goals": GOALS,
        "pass": verdicts(run, up),
        "seconds": round(time.perf_counter() - started, 1),
    }


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    defaults = Options()
    parser.add_argument("--stages", default=defaults.stages, choices=("full", "phase1"), help="the pipeline run")
    parser.add_argument("--latency-s", type=float, default=defaults.latency_s, help="each scripted model call's wait")
    parser.add_argument("--repeat-up", type=int, default=defaults.repeat_up, help="factory up start-ups measured")
    parser.add_argument("--run-timeout-s", type=float, default=defaults.run_timeout_s)
    parser.add_argument("--redis-url", default=defaults.redis_url, help="an embedded Redis is started if unreachable")
    options = Options(**vars(parser.parse_args(argv)))
    try:
        options.check()
    except SystemExit as exc:
        parser.error(str(exc))  # exit 2, with the usage
    return options


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(bench(parse(argv)), indent=2))


if __name__ == "__main__":
    main()
