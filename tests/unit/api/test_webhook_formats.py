"""Webhook bodies: the factory's JSON, and messages Slack and Discord accept, within their limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from api.webhooks import WebhookFormat
from api.webhooks.formats import (
    DISCORD_CONTENT,
    DISCORD_DESCRIPTION,
    SLACK_TEXT,
    body_bytes,
    clip,
    discord,
    headline,
    render,
    slack,
)
from observability.base import Event

AT = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)


def opened(question: str = "which datastore?") -> Event:
    data = {"stage": 2, "id": "esc-1a2b", "kind": "blocked", "priority": "high", "team": "backend-engineering",
            "question": question}  # fmt: skip
    return Event(type="escalation.opened", run_id="run-42", data=data, at=AT)


def test_json_is_the_event_with_the_delivery_id() -> None:
    body = render(WebhookFormat.JSON, "dlv-1", opened())
    assert body == {"id": "dlv-1", "type": "escalation.opened", "run_id": "run-42", "data": opened().data,
                    "at": "2026-12-06T09:30:00+00:00"}  # fmt: skip
    assert json.loads(body_bytes(body)) == body


def test_the_headline_reads_as_one_line() -> None:
    assert headline(opened("which\n  datastore?")) == (
        "high escalation esc-1a2b (backend-engineering): which datastore? — run run-42"
    )
    failed = Event(type="run.failed", run_id="run-42", data={"stage": 1, "team": "qa-engineering", "error": "boom"},
                   at=AT)  # fmt: skip
    assert headline(failed) == "run run-42 failed at qa-engineering (stage 2): boom"
    said = {"id": "esc-1", "team": "qa-engineering", "decision": "approved", "decided_by": "ana", "text": None}
    decided = Event(type="escalation.decided", run_id="run-42", at=AT, data=said)
    assert headline(decided) == "escalation esc-1 (qa-engineering) approved by ana — run run-42"
    sla = Event(type="escalation.sla", run_id="r", at=AT, data={"id": "esc-1", "team": "t", "level": 2,
                                                                "step": "breached"})  # fmt: skip
    assert headline(sla) == "escalation esc-1 (t) raised to SLA level 2 (breached) — run r"
    done = Event(type="run.completed", run_id="r", data={"artifacts": 7}, at=AT)
    assert headline(done) == "run r complete (7 artifacts)"


def test_slack_has_text_and_blocks_and_escapes_markup() -> None:
    body = slack("dlv-1", opened("use <!channel> & <https://x|y>?"))
    assert body["text"].startswith(
        ":rotating_light: high escalation esc-1a2b (backend-engineering): use &lt;!channel&gt;"
    )
    assert "&amp;" in body["text"] and "<" not in body["text"]
    section, context = body["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    assert context["type"] == "context" and "dlv-1" in context["elements"][0]["text"]


def test_slack_text_is_cut_cleanly_within_its_limit() -> None:
    body = slack("dlv-1", opened("word " * 2000 + "&&&&&&"))
    for text in (body["text"], body["blocks"][0]["text"]["text"]):
        assert len(text) <= SLACK_TEXT and text.endswith("…")
        assert not text.rstrip("…").endswith(" ")
    ampersands = slack("dlv-1", opened("&" * 5000))["text"]
    assert len(ampersands) <= SLACK_TEXT and ampersands.removesuffix("…").endswith("&amp;")  # no entity cut


def test_discord_has_content_within_2000_and_an_embed_that_pings_nobody() -> None:
    body = discord("dlv-1", opened("@everyone " + "x" * 10_000))
    assert len(body["content"]) <= DISCORD_CONTENT and body["content"].endswith("…")
    assert body["content"].startswith("\U0001f6a8 high escalation esc-1a2b")
    assert body["allowed_mentions"] == {"parse": []}
    [embed] = body["embeds"]
    assert embed["title"] == "escalation.opened" and len(embed["description"]) <= DISCORD_DESCRIPTION
    assert {"name": "team", "value": "backend-engineering", "inline": True} in embed["fields"]
    assert embed["timestamp"] == AT.isoformat() and embed["footer"] == {"text": "delivery dlv-1"}


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 10, "short"),
        ("alpha beta gamma delta epsilon zeta eta theta", 40, "alpha beta gamma delta epsilon zeta…"),
        ("abcdefghij", 5, "abcd…"),  # no word near the limit: cut inside it
    ],
)
def test_clip_cuts_at_a_word_near_the_limit(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected
