"""`factory webhooks` and `factory worker` end to end, each a real process: a webhook added from the
command line (its secret printed once), a signed test ping, an escalation published while no worker
runs that reaches the receiver once `factory worker` starts, the delivery log, the dead letter of a
receiver that is down and its replay, and bad input refused before any service starts. (A run's own
escalation reaching a receiver: test_webhooks.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from api.webhooks import verify_signature
from observability.base import Event
from tests.integration.cli import FACTORY, factory
from tests.integration.test_webhooks import Receiver, emit, event, running_receiver
from tests.integration.test_worker_groupchat import stop_process

pytestmark = pytest.mark.integration
ALLOW_LOOPBACK = {"FACTORY_WEBHOOK_ALLOW_PRIVATE": "true"}  # the receivers here are on 127.0.0.1


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    fast = {"FACTORY_WEBHOOK_BACKOFF_S": "0.05", "FACTORY_WEBHOOK_BACKOFF_CAP_S": "0.2",
            "FACTORY_WEBHOOK_ATTEMPTS": "2", "FACTORY_WEBHOOK_POLL_S": "0.1", "FACTORY_WORKER_POLL_S": "0.5",
            "FACTORY_OPERATOR": "ana", **ALLOW_LOOPBACK}  # fmt: skip
    return {**env, **fast}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


async def publish(env: dict[str, str], *events: Event) -> None:
    client = Redis.from_url(env["FACTORY_REDIS_URL"])
    try:
        await emit(client, env["FACTORY_REDIS_PREFIX"], *events)
    finally:
        await client.aclose()


def ok(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = factory("webhooks", *args, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def until(check: Callable[[], Any], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout_s}s")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "ftp://example.com/x", "--events", "run.failed"], "must be http:// or https://"),
        (["add", "http://127.0.0.1:9/x", "--events", "run.exploded"], "unknown event type 'run.exploded'"),
        (["add", "http://127.0.0.1:9/x"], "name the event types to deliver with --events"),
        (["add", "http://127.0.0.1:9/x", "--events", "run.failed", "--format", "teams"], "unknown webhook format"),
        (["remove", "42"], "the webhook id '42' is not valid"),
        (["replay"], "give one dead delivery's id, or --all"),
    ],
)
def test_bad_input_is_refused_before_any_service_starts(args: list[str], says: str, cli_env: dict[str, str]) -> None:
    env = {**cli_env, **ALLOW_LOOPBACK}  # no database, no Redis configured: never reached
    proc = factory("webhooks", *args, env=env, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:9/x?token=s3cret", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal is a local name"),
    ],
)
def test_a_url_into_the_factorys_own_network_is_refused_unless_allowed(
    url: str, says: str, cli_env: dict[str, str]
) -> None:
    proc = factory("webhooks", "add", url, "--events", "run.failed", env=cli_env, timeout=60)  # nothing configured
    assert proc.returncode == 2 and says in proc.stderr and "FACTORY_WEBHOOK_ALLOW_PRIVATE=true" in proc.stderr
    assert "s3cret" not in proc.stderr and "meta-data" not in proc.stderr


def test_the_worker_delivers_an_escalation_to_a_webhook_added_from_the_cli(
    env: dict[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    added = json.loads(ok("add", receiver.url("/ops"), "--events", "escalation.opened,run.completed", "--json",
                          env=env).stdout)  # fmt: skip
    secret, hook = added.pop("secret"), added["id"]
    assert secret.startswith("whsec_") and added["events"] == ["escalation.opened", "run.completed"]
    listed = json.loads(ok("list", "--json", env=env).stdout)
    assert [h["id"] for h in listed] == [hook] and secret not in json.dumps(listed)

    pinged = ok("test", hook, env=env)
    assert f"webhook {hook} answered 200" in pinged.stdout
    [ping] = receiver.at("/ops")
    verify_signature(secret, ping.headers["Factory-Signature"], ping.body)
    assert ping.json()["type"] == ping.headers["Factory-Event"] == "webhook.test"

    receiver.plans["/down"] = [500]
    down = json.loads(ok("add", receiver.url("/down"), "--events", "escalation.opened", "--format", "slack",
                         "--json", env=env).stdout)  # fmt: skip

    # A run's escalation, published as the pipeline does, while no worker runs: it waits in the stream
    # for the webhooks' group (made by `add`) until a worker starts.
    opened_event = event("escalation.opened", run_id="run-7", id="esc-7", priority="high",
                         team="backend-engineering", kind="blocked", question="which datastore?")  # fmt: skip
    asyncio.run(publish(env, opened_event))
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([FACTORY, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                              start_new_session=True)  # fmt: skip
    try:
        until(lambda: len(receiver.at("/ops")) == 2)
        opened = receiver.at("/ops")[1]
        verify_signature(secret, opened.headers["Factory-Signature"], opened.body)
        body = opened.json()
        assert (body["type"], body["run_id"], body["data"]["question"]) == ("escalation.opened", "run-7",
                                                                            "which datastore?")  # fmt: skip

        until(lambda: len(receiver.at("/down")) == 2)  # both attempts failed: dead
        time.sleep(0.3)
        [dead] = json.loads(ok("dead", "--json", env=env).stdout)
        assert (dead["webhook_id"], dead["status"], dead["attempts"], dead["last_status"]) == (down["id"], "dead",
                                                                                             2, 500)  # fmt: skip
        receiver.plans["/down"] = [200]
        assert "1 dead deliveries replayed" in ok("replay", "--all", env=env).stdout
        until(lambda: len(receiver.at("/down")) == 3)
        assert receiver.at("/down")[2].json()["text"].startswith(":rotating_light: high escalation")

        log_rows = json.loads(ok("deliveries", "--json", env=env).stdout)
        assert sorted((r["webhook_id"], r["status"]) for r in log_rows) == sorted(
            [(hook, "delivered"), (down["id"], "delivered")]
        )
        assert "payload" not in log_rows[0]
        stop_process(worker, signal.SIGTERM)
        assert worker.returncode == 0, log.read_text()
    finally:
        stop_process(worker, signal.SIGKILL)

    assert f"removed webhook {hook}" in ok("remove", hook, env=env).stdout
    again = factory("webhooks", "remove", hook, env=env)
    assert again.returncode == 2 and f"no webhook '{hook}'" in again.stderr
