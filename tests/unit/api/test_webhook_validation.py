"""What a webhook registration may hold, the errors that say what to fix, and URLs shown without tokens."""

from __future__ import annotations

import pytest

from api.webhooks import EVENT_TYPES, WebhookFormat
from api.webhooks.validation import check_events, check_format, check_id, check_url, shown_url
from factory.errors import InputError


@pytest.mark.parametrize("url", ["https://example.com/hooks", "http://127.0.0.1:8080/h?token=abc", " https://x.io "])
def test_http_urls_are_taken(url: str) -> None:
    # the loopback one is allowed here as FACTORY_WEBHOOK_ALLOW_PRIVATE allows it (refused by default:
    # test_webhook_addresses.py)
    assert check_url(url, allow_private=True) == url.strip()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "empty"),
        ("ftp://example.com/x", "must be http:// or https:// \\(it has ftp:\\)"),
        ("example.com/hooks", "must be http:// or https://"),
        ("file:///etc/passwd", "must be http"),
        ("https:///path", "no host"),
        ("https://example.com:99999/x", "bad port"),
        ("https://exa mple.com/", "space or a control character"),
        ("https://example.com/x#frag", "#fragment"),
        ("https://example.com/" + "a" * 3000, "over 2048 characters"),
    ],
)
def test_bad_urls_are_refused_without_quoting_them(url: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as caught:
        check_url(url)
    assert "example.com/x" not in str(caught.value)


def test_events_are_checked_against_the_known_list() -> None:
    assert check_events(["run.failed", " escalation.opened ", "run.failed"]) == ["escalation.opened", "run.failed"]
    with pytest.raises(InputError) as caught:
        check_events(["escalation.opened", "run.exploded", "stage.started"])
    message = str(caught.value)
    assert "unknown event type 'run.exploded', 'stage.started'" in message
    assert all(name in message for name in EVENT_TYPES)
    with pytest.raises(InputError, match="at least one event type"):
        check_events(["", " "])


def test_formats_and_ids() -> None:
    assert check_format("Slack") is WebhookFormat.SLACK
    with pytest.raises(InputError, match="unknown webhook format 'teams'; choose one of json, slack, discord"):
        check_format("teams")
    assert check_id("wh-0a1b2c3d4e5f") == "wh-0a1b2c3d4e5f"
    with pytest.raises(InputError, match="not valid"):
        check_id("wh-x'; drop table webhooks")
    with pytest.raises(InputError, match="dlv-"):
        check_id("wh-0a1b2c3d4e5f", "delivery")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "https://hooks.slack.com/services/…"),
        ("https://discord.com/api/webhooks/123/tokentoken", "https://discord.com/api/…"),
        ("http://127.0.0.1:8123/hook", "http://127.0.0.1:8123/hook"),
        ("https://user:pw@example.com/" + "t" * 40, "https://example.com/…"),
        ("https://example.com/h?token=abc", "https://example.com/h?…"),
        ("https://example.com", "https://example.com"),
    ],
)
def test_a_url_is_shown_without_what_may_be_a_token(url: str, shown: str) -> None:
    assert shown_url(url) == shown
