"""The bodies a webhook receives: the factory's JSON, or a message for Slack's or Discord's
incoming webhooks. Pure functions of (delivery id, event), so each is tested without a server.

Chat messages are one readable line ("🚨 high escalation esc-… (backend-engineering): which
datastore? — run …") plus details, within each service's limits (Slack: 3000 characters a section,
Discord: 2000 a message, 4096 an embed's description), cut at a word with an ellipsis. Text from
runs is neutralised: Slack's ``<!channel>``-style markup is escaped, Discord mentions are not parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from api.webhooks.base import WebhookFormat
from observability.base import Event

SLACK_TEXT = 3000  # a section block's text; the top-level text is kept to the same
SLACK_CONTEXT = 2000
DISCORD_CONTENT = 2000
DISCORD_TITLE = 256
DISCORD_DESCRIPTION = 4096
DISCORD_FIELD = 1024
DISCORD_FOOTER = 2048

#: Per event type: the Slack emoji code, the same emoji for Discord (which does not expand codes
#: sent by a webhook), and the embed's colour.
_LOOK: dict[str, tuple[str, str, int]] = {
    "escalation.opened": ("rotating_light", "\U0001f6a8", 0xE01E5A),
    "escalation.sla": ("alarm_clock", "\u23f0", 0xF2A33A),
    "escalation.decided": ("white_check_mark", "\u2705", 0x2EB67D),
    "escalation.deferred": ("hourglass_flowing_sand", "\u23f3", 0x8E8E8E),
    "run.completed": ("tada", "\U0001f389", 0x2EB67D),
    "run.failed": ("x", "\u274c", 0xE01E5A),
    "run.cancelled": ("no_entry", "\u26d4", 0x8E8E8E),
    "webhook.test": ("wave", "\U0001f44b", 0x36C5F0),
}
_DEFAULT_LOOK = ("bell", "\U0001f514", 0x36C5F0)
_SPACES = re.compile(r"\s+")


def render(fmt: WebhookFormat, delivery_id: str, event: Event) -> dict[str, Any]:
    """The body (as JSON data) of ``event`` delivered as ``delivery_id`` in format ``fmt``."""
    if fmt is WebhookFormat.SLACK:
        return slack(delivery_id, event)
    if fmt is WebhookFormat.DISCORD:
        return discord(delivery_id, event)
    return {"id": delivery_id, "type": event.type, "run_id": event.run_id, "data": event.data,
            "at": event.at.isoformat()}  # fmt: skip


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed) for a stored payload."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def headline(event: Event) -> str:
    """One readable line saying what happened, without an emoji."""
    d = event.data
    run = f" — run {event.run_id}"
    esc, team = _s(d.get("id")) or "?", _s(d.get("team"))
    who = f" ({team})" if team else ""
    if event.type == "escalation.opened":
        kind = _s(d.get("kind"))
        kind = f" {kind}" if kind and kind != "blocked" else ""
        return f"{_s(d.get('priority')) or 'new'}{kind} escalation {esc}{who}: {_one_line(d.get('question'))}{run}"
    if event.type == "escalation.sla":
        step = _s(d.get("step")).replace("_", " ")
        step = f" ({step})" if step else ""
        due = f", due {_s(d.get('sla_deadline'))}" if d.get("sla_deadline") else ""
        return f"escalation {esc}{who} raised to SLA level {_s(d.get('level'))}{step}{due}{run}"
    if event.type in ("escalation.decided", "escalation.deferred"):
        decision = "deferred" if event.type == "escalation.deferred" else _s(d.get("decision")) or "decided"
        by = f" by {_s(d.get('decided_by'))}" if d.get("decided_by") else ""
        said = f": {_one_line(d.get('text'))}" if d.get("text") else ""
        return f"escalation {esc}{who} {decision}{by}{said}{run}"
    if event.type == "run.completed":
        count = d.get("artifacts")
        return f"run {event.run_id} complete" + (f" ({count} artifacts)" if isinstance(count, int) else "")
    if event.type == "run.failed":
        where = f" at {team} (stage {int(d['stage']) + 1})" if team and isinstance(d.get("stage"), int) else ""
        return f"run {event.run_id} failed{where}: {_one_line(d.get('error')) or 'no reason given'}"
    if event.type == "run.cancelled":
        where = f" at {team}" if team else ""
        reason = f": {_one_line(d.get('reason'))}" if d.get("reason") else ""
        return f"run {event.run_id} cancelled{where}{reason}"
    if event.type == "webhook.test":
        return f"test from the factory: webhook {_s(d.get('webhook_id'))} is reachable and its signature checks out"
    return f"{event.type}{run}"


def details(event: Event) -> str:
    """The longer text of an event (an escalation's question, a failure's error), lines kept."""
    d = event.data
    for key in ("question", "error", "text", "reason"):
        if isinstance(d.get(key), str) and d[key].strip():
            return str(d[key]).strip()
    return ""


def slack(delivery_id: str, event: Event) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications) and ``blocks`` (what is shown)."""
    code, _, _ = _LOOK.get(event.type, _DEFAULT_LOOK)
    line = f":{code}: {headline(event)}"
    context = f"`{event.type}` · run `{event.run_id}` · {event.at.isoformat(timespec='seconds')} · {delivery_id}"
    return {
        "text": _slack_clip(line, SLACK_TEXT),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _slack_clip(line, SLACK_TEXT)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_clip(context, SLACK_CONTEXT)}]},
        ],
    }


def discord(delivery_id: str, event: Event) -> dict[str, Any]:
    """A Discord webhook message: ``content`` (≤ 2000 characters) and one embed with the details."""
    _, emoji, colour = _LOOK.get(event.type, _DEFAULT_LOOK)
    d = event.data
    fields = [{"name": "run", "value": clip(event.run_id, DISCORD_FIELD), "inline": True}]
    for key in ("id", "team", "priority", "level", "decided_by"):
        if d.get(key) not in (None, ""):
            name = "escalation" if key == "id" else key.replace("_", " ")
            fields.append({"name": name, "value": clip(_s(d[key]), DISCORD_FIELD), "inline": True})
    embed: dict[str, Any] = {
        "title": clip(event.type, DISCORD_TITLE),
        "color": colour,
        "fields": fields,
        "timestamp": event.at.isoformat(),
        "footer": {"text": clip(f"delivery {delivery_id}", DISCORD_FOOTER)},
    }
    if text := details(event):
        embed["description"] = clip(text, DISCORD_DESCRIPTION)
    return {
        "content": clip(f"{emoji} {headline(event)}", DISCORD_CONTENT),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},  # an @everyone in a question pings nobody
    }


def clip(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else cut at a word near the limit, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _slack_clip(text: str, limit: int) -> str:
    """``text`` escaped for Slack (``&``, ``<``, ``>``), then clipped without cutting an entity."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if len(escaped) <= limit:
        return escaped
    cut = clip(escaped, limit)[:-1]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut.rstrip() + "…"


def _one_line(value: object) -> str:
    return _SPACES.sub(" ", _s(value)).strip()


def _s(value: object) -> str:
    return "" if value is None else str(value)
