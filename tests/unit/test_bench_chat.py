"""``bench/chat.py``: its matching of the event stream to what the page showed, on the shapes the
stream and Chainlit really carry; its recorder in the real chromium; and one tiny run end to end
(no timing is asserted: this machine's speed is not the code's)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis

from bench.chat import (
    CHROMIUM,
    CHROMIUM_ARGS,
    GOALS,
    RECORDER_JS,
    Options,
    StageEvent,
    arrivals,
    bench,
    committed_to_dom,
    frame_event,
    frame_title,
    match,
    parse,
    pct,
    per_second,
    stage_events,
    update_rate,
)
from observability.base import Event
from tests.chromium import ensure_chromium

T0 = datetime(2026, 12, 4, 22, 0, 0, tzinfo=UTC)
T0_MS = T0.timestamp() * 1000
RUN = "run-20261204-220000-0a1b2c3d"

# Frames as the page received them from Chainlit 2.12 (first characters, as the recorder keeps them).
STEP_RUNNING = (
    '42["new_message",{"name":"1. product-management \\u00b7 running","type":"run",'
    '"id":"a6f12d5a-9761-5a07-adf3-b49b9551a8f1","threadId":"ef73187d-b68a-4a49-a334-5e06b09e4976"'
)
STEP_COMPLETE = (
    '42["update_message",{"name":"1. product-management \\u00b7 complete","type":"run",'
    '"id":"a6f12d5a-9761-5a07-adf3-b49b9551a8f1","threadId":"ef73187d-b68a-4a49-a334-5e06b09e4976"'
)
HEADLINE = (
    '42["update_message",{"id":"f5f5a562-fb98-55be-990c-86220d013b74","threadId":"ef73187d-b68a-4a49-a334-'
    '5e06b09e4976","parentId":null,"createdAt":"2026-12-04T22:00:01.000Z","start":null,"end":null,"output"'
)
ON_MESSAGE = '42["new_message",{"name":"on_message","type":"run","id":"d9c99ea1-4a8d-4756-83b1-e79a7b41326d"'
CONTROL = ["3probe", '40{"sid":"BOYud9-tNWo8WIxOAAAD"}', "2", "3", '0{"sid":"x","upgrades":[]}']


def entry(n: int, kind: str, run_id: str = RUN, after_ms: float = 0.0, **data: Any) -> tuple[str, dict[str, str]]:
    """An XRANGE entry as ``RedisEventStream`` writes it (decoded)."""
    event = Event(type=kind, run_id=run_id, data=data, at=T0 + timedelta(milliseconds=after_ms))
    return f"1796423122534-{n}", {"type": kind, "json": event.model_dump_json()}


def test_stage_events_keep_the_runs_first_of_each_and_count_the_repeats() -> None:
    entries = [
        entry(0, "run.started", pipeline=["product-management", "business-analysis"]),
        entry(1, "stage.started", after_ms=10, stage=0, team="product-management"),
        entry(2, "stage.started", run_id="run-other", after_ms=11, stage=0, team="product-management"),
        entry(3, "memory.retained", after_ms=300, stage=0, team="product-management", items=2),
        entry(4, "stage.completed", after_ms=400, stage=0, team="product-management", tokens_in=5, replaced={}),
        entry(5, "stage.started", after_ms=410, stage=1, team="business-analysis"),
        entry(6, "stage.started", after_ms=900, stage=1, team="business-analysis"),  # executed again
        entry(7, "stage.completed", after_ms=1200, stage=1, team="business-analysis", tokens_in=5, replaced={}),
        entry(8, "run.completed", after_ms=1300, artifacts=3),
    ]
    events, repeats = stage_events(entries, RUN)
    assert [(e.kind, e.stage, e.team, e.at_ms - T0_MS) for e in events] == [
        ("started", 0, "product-management", 10.0),
        ("completed", 0, "product-management", 400.0),
        ("started", 1, "business-analysis", 410.0),
        ("completed", 1, "business-analysis", 1200.0),
    ]
    assert repeats == 1
    assert events[1].title() == "1. product-management · complete"
    assert events[2].title() == "2. business-analysis · running"


def test_a_running_never_drawn_is_coalesced_and_a_completion_never_drawn_is_lost() -> None:
    events = [
        StageEvent("started", 0, "product-management", T0_MS),
        StageEvent("completed", 0, "product-management", T0_MS + 1000),
        StageEvent("started", 1, "business-analysis", T0_MS + 1010),  # never drawn running: coalesced
        StageEvent("completed", 1, "business-analysis", T0_MS + 1100),
        StageEvent("started", 2, "solution-architecture", T0_MS + 1110),
        StageEvent("completed", 2, "solution-architecture", T0_MS + 2000),  # never drawn complete: lost
    ]
    dom = {
        "1. product-management · running": T0_MS + 150,
        "1. product-management · complete": T0_MS + 1120,
        "2. business-analysis · complete": T0_MS + 1260,
        "3. solution-architecture · running": T0_MS + 1300,
    }
    arrived = {"1. product-management · running": T0_MS + 140, "1. product-management · complete": T0_MS + 1100}
    result = match(events, dom, arrived)
    assert result["events"] == 6
    assert result["coalesced_running_states"] == 1
    assert result["lost"] == ["3. solution-architecture · complete"] and result["events_lost"] == 1
    assert result["started"]["n"] == 2 and result["started"]["max_ms"] == 190.0 and result["started"]["min_ms"] == 150
    assert result["completed"]["n"] == 2 and sorted([120.0, 160.0]) == [
        result["completed"]["min_ms"],
        result["completed"]["max_ms"],
    ]
    assert result["all"]["n"] == 4 and result["all"]["p50_ms"] == 155.0  # median of 120, 150, 160, 190
    assert result["event_to_frame"]["n"] == 2 and result["event_to_frame"]["max_ms"] == 140.0
    assert result["frame_to_dom"]["min_ms"] == 10.0 and result["frame_to_dom"]["max_ms"] == 20.0


def test_a_completion_is_also_measured_from_its_committed_record() -> None:
    events = [StageEvent("completed", 0, "product-management", T0_MS + 350)]
    rows = [
        (0, "product-management", T0 + timedelta(milliseconds=10)),
        (1, "business-analysis", None),  # not finished: nothing to measure
        (2, "solution-architecture", T0 + timedelta(milliseconds=900)),  # finished, never shown
    ]
    dom = {"1. product-management · complete": T0_MS + 410}
    figures = committed_to_dom(rows, events, dom)
    assert figures["completed_record_to_dom"]["n"] == 1 and figures["completed_record_to_dom"]["p50_ms"] == 400.0
    assert figures["completed_event_after_record"]["p50_ms"] == 340.0


def test_frames_are_named_and_step_titles_read_from_the_escaped_json() -> None:
    assert frame_event(STEP_RUNNING) == "new_message"
    assert frame_event(HEADLINE) == "update_message"
    assert frame_event('42["task_end",{}]') == "task_end"
    assert frame_event('42/chat,7["element",{"id":"d4165"}]') == "element"  # a namespace and an ack id
    assert [frame_event(head) for head in CONTROL] == [None] * len(CONTROL)
    assert frame_title(STEP_RUNNING) == "1. product-management · running"
    assert frame_title(STEP_COMPLETE) == "1. product-management · complete"
    assert frame_title(HEADLINE) is None and frame_title(ON_MESSAGE) is None
    assert frame_title('42["element",{"name":"1. product-management \\u00b7 complete"') is None  # not a step
    frames = [(1.0, ON_MESSAGE), (2.0, STEP_RUNNING), (3.0, STEP_RUNNING), (4.0, STEP_COMPLETE)]
    assert arrivals(frames) == {"1. product-management · running": 2.0, "1. product-management · complete": 4.0}


def test_updates_are_counted_per_second_with_the_empty_seconds_in() -> None:
    assert per_second([0, 999, 1000, 3500], 0, 3500) == [2, 1, 0, 1]
    assert per_second([-1, 5000], 0, 4000) == [0, 0, 0, 0]  # outside the window: not counted
    assert per_second([], 0, 0) == [0]
    start = 10_000.0
    frames = [(start - 5, ON_MESSAGE), (start + 10, ON_MESSAGE), (start + 20, "2"), (start + 30, STEP_RUNNING)]
    frames += [(start + 1000 + i, STEP_COMPLETE) for i in range(5)] + [(start + 1500, '42["element",{"id":"x"}]')]
    frames += [(start + 3200, HEADLINE)]
    rate = update_rate(frames, start)
    assert rate["message_updates"] == 8 and rate["seconds"] == 4
    assert rate["per_second_max"] == 5 and rate["per_second_median"] == 1.5  # [2, 5, 0, 1]
    assert rate["busiest_second"] == {"offset_s": 1, "frames": {"update_message": 5, "element": 1}}
    assert rate["all_frames_by_event"] == {"new_message": 2, "<control>": 1, "update_message": 6, "element": 1}
    assert update_rate([(start + 1, "2")], start)["message_updates"] == 0


def test_percentiles() -> None:
    assert pct([5.0, 1.0, 3.0], 0.5) == 3.0
    assert pct(list(map(float, range(101))), 0.95) == 95.0
    assert pct([7.0], 0.95) == 7.0


def test_the_recorder_in_chromium_keeps_each_titles_first_dom_time_however_react_changes_it() -> None:
    """The init script on a page laid out as Chainlit draws a step: a title added with its
    element, a title whose text node is edited in place, a title re-rendered as a new node."""
    from playwright.sync_api import sync_playwright

    ensure_chromium()
    os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", "/nonexistent")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.add_init_script(RECORDER_JS)
            page.goto("data:text/html,<main id=steps></main>")  # a new document: the init script runs first
            page.evaluate("""async () => {
                const pause = () => new Promise((r) => setTimeout(r, 30));
                const steps = document.getElementById("steps");
                const step = (title) => {
                  const button = document.createElement("button");
                  button.innerHTML = "<span>Used</span> ";
                  button.appendChild(document.createTextNode(title));
                  steps.appendChild(button);
                  return button;
                };
                const first = step("1. product-management · running");
                await pause();
                first.lastChild.data = "1. product-management · complete";  // edited in place
                await pause();
                const second = step("2. business-analysis · running");
                await pause();
                second.replaceWith(step("2. business-analysis · complete"));  // a new node
                await pause();
                steps.insertAdjacentHTML("beforeend", "<p><strong>Run complete.</strong> 3 artifacts</p>");
            }""")
            recorded: dict[str, Any] = page.evaluate("window.__bench")
        finally:
            browser.close()
    dom = recorded["dom"]
    order = [
        "1. product-management · running",
        "1. product-management · complete",
        "2. business-analysis · running",
        "2. business-analysis · complete",
    ]
    assert sorted(dom) == sorted(order)
    times = [dom[title] for title in order]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))  # each at its own change, in order
    assert recorded["end"] is not None and recorded["end"] >= times[-1]
    assert recorded["frames"] == []  # no socket on this page


@pytest.mark.integration
def test_a_tiny_run_reports_every_figure_and_loses_no_stage_and_leaves_nothing_behind() -> None:
    report = bench(Options(stages="phase1", latency_s=0.05, repeat_up=1))
    json.dumps(report)  # printable as it is
    assert set(report) == {"machine", "options", "services", "chat_run", "up_to_first_page", "goals", "pass", "seconds"}
    assert {"cpu_count", "python", "chainlit", "playwright", "chromium"} <= set(report["machine"])
    assert report["goals"] == GOALS
    assert set(report["pass"]) == set(GOALS)
    assert all(isinstance(v, bool) for v in report["pass"].values())

    run = report["chat_run"]
    assert run["stages"] == 5 and run["repeated_stage_events"] == 0
    latency = run["event_to_dom"]
    assert latency["events"] == 10
    assert latency["lost"] == [] and report["pass"]["events_lost"] is True  # every completion reached the page
    assert latency["completed"]["n"] == 5
    assert latency["started"]["n"] + latency["coalesced_running_states"] == 5
    assert latency["completed_record_to_dom"]["n"] == 5
    assert latency["event_to_frame"]["n"] == latency["all"]["n"]  # every shown title came in a step frame

    updates = run["updates"]
    assert updates["frames_in_page"] == updates["frames_seen_by_playwright"] > 0  # the page's hook missed none
    assert updates["message_updates"] >= 10  # at least a step frame per shown state
    assert updates["all_frames_by_event"]["new_message"] >= 5  # one step per stage, at least

    up = report["up_to_first_page"]
    assert up["repeats"] == 1 and len(up["each"]) == 1
    assert 0 < up["each"][0]["services_s"] < up["each"][0]["first_page_s"]

    if report["services"]["redis"].startswith("redis://"):  # not an embedded one, gone with its directory
        client = Redis.from_url(report["services"]["redis"])
        try:
            assert list(client.scan_iter(match=f"{report['services']['redis_prefix']}*")) == []
        finally:
            client.close()


def test_options_are_bounded_with_a_message_saying_what_to_give() -> None:
    assert parse(["--stages", "phase1", "--latency-s", "0.1", "--repeat-up", "1"]) == Options(
        stages="phase1", latency_s=0.1, repeat_up=1
    )
    with pytest.raises(SystemExit, match="--stages"):
        Options(stages="custom").check()
    with pytest.raises(SystemExit, match="--repeat-up"):
        Options(repeat_up=-1).check()
    with pytest.raises(SystemExit) as bad:
        parse(["--latency-s", "-1"])
    assert bad.value.code == 2  # as argparse's own errors
