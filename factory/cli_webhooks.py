"""``factory webhooks add|list|remove|enable|disable|deliveries|dead|replay|test`` (issue 18, part 4).

Webhooks are delivered by ``factory worker`` (and the worker ``factory up`` starts): these commands
register receivers, read the delivery log and the dead letter, replay, and send a test ping. A
webhook's signing secret is printed once, by ``add``; no command prints it again, nor a whole URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from factory.cli_common import EXIT_FAILED, EXIT_INPUT, echo, err, load_settings, print_json, who_decides, with_factory

if TYPE_CHECKING:
    from api.webhooks import Attempt, Delivery, Registered, Webhook
    from factory.wiring import Factory

webhooks_app = typer.Typer(no_args_is_help=True, help="Signed notifications of escalations and runs.")

WebhookId = Annotated[str, typer.Argument(help="The webhook's id (wh-…), from `factory webhooks list`.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
OfWebhook = Annotated[str | None, typer.Option("--webhook", help="Only this webhook's deliveries.")]


def _checked(check: Any, *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, its ``InputError`` a one-line exit 2 before any service starts."""
    from factory.errors import InputError

    try:
        return check(*args, **kwargs)
    except InputError as exc:
        err(str(exc), exc.exit_code)


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="The receiver's http(s) URL.", show_default=False)],
    events: Annotated[
        str | None, typer.Option("--events", help="Comma-separated event types, e.g. escalation.opened,run.failed.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="json (signed factory JSON), slack or discord.")] = "json",
    by: Annotated[str | None, typer.Option("--by", help="Who adds it (default: FACTORY_OPERATOR, else you).")] = None,
    as_json: AsJson = False,
) -> None:
    """Register a webhook; its signing secret is printed this once (keep it where the receiver reads it)."""
    from api.webhooks.base import EVENT_TYPES
    from api.webhooks.validation import check_events, check_format, check_url

    if events is None:
        err(f"name the event types to deliver with --events, e.g. --events {','.join(EVENT_TYPES[:2])}", EXIT_INPUT)
    settings = load_settings()  # FACTORY_WEBHOOK_ALLOW_PRIVATE decides whether a local URL is taken
    checked_url = _checked(check_url, url, allow_private=settings.webhook_allow_private)
    named = _checked(check_events, events.split(","))
    checked_format = _checked(check_format, fmt)
    who = who_decides(settings, by)

    async def go(factory: Factory) -> Registered:
        from factory.wiring import webhooks

        return await webhooks(factory).add(checked_url, named, fmt=checked_format, by=who)

    added: Registered = with_factory(go, settings)
    if as_json:
        print_json({**_hook(added.webhook), "secret": added.secret})
        return
    hook = added.webhook
    echo(f"webhook {hook.id} added: {hook.url} ({hook.format.value}) for {', '.join(hook.events)}")
    echo(f"signing secret (shown once, keep it now): {added.secret}")
    echo("receivers check Factory-Signature with it; `factory webhooks test " + hook.id + "` sends a signed ping")


@webhooks_app.command("list")
def webhooks_list(as_json: AsJson = False) -> None:
    """The webhooks: id, where (never the whole URL), format, events, active or paused."""

    async def go(factory: Factory) -> list[Webhook]:
        from factory.wiring import webhooks

        return await webhooks(factory).list()

    hooks: list[Webhook] = with_factory(go)
    if as_json:
        print_json([_hook(h) for h in hooks])
        return
    if not hooks:
        echo("no webhooks; add one with `factory webhooks add URL --events escalation.opened`")
    for h in hooks:
        state = "" if h.active else "  (paused)"
        echo(f"{h.id}  {h.format.value:7}  {h.url}  {','.join(h.events)}{state}")


@webhooks_app.command("remove")
def webhooks_remove(webhook_id: WebhookId) -> None:
    """Remove a webhook, with its delivery log and dead letter."""
    from api.webhooks.validation import check_id

    checked = _checked(check_id, webhook_id)
    settings = load_settings()
    who = who_decides(settings, None)

    async def go(factory: Factory) -> None:
        from factory.wiring import webhooks

        await webhooks(factory).remove(checked, by=who)

    with_factory(go, settings)
    echo(f"removed webhook {checked}")


def _set_active(webhook_id: str, active: bool) -> None:
    from api.webhooks.validation import check_id

    checked = _checked(check_id, webhook_id)

    async def go(factory: Factory) -> Webhook:
        from factory.wiring import webhooks

        return await webhooks(factory).set_active(checked, active)

    hook: Webhook = with_factory(go)
    echo(f"webhook {hook.id} {'active' if hook.active else 'paused: its deliveries wait, new events make none'}")


@webhooks_app.command("enable")
def webhooks_enable(webhook_id: WebhookId) -> None:
    """Resume a paused webhook: its waiting deliveries are sent, new events make deliveries again."""
    _set_active(webhook_id, True)


@webhooks_app.command("disable")
def webhooks_disable(webhook_id: WebhookId) -> None:
    """Pause a webhook: nothing is sent to it and new events make no deliveries until it is enabled."""
    _set_active(webhook_id, False)


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    webhook: OfWebhook = None,
    status: Annotated[str | None, typer.Option("--status", help="pending, delivered or dead.")] = None,
    last: Annotated[int, typer.Option("--last", help="How many, newest first (1 to 1000).")] = 20,
    as_json: AsJson = False,
) -> None:
    """The delivery log, newest first: event, webhook, status, attempts, last answer or error."""
    _show_deliveries(webhook, status, last, as_json)


@webhooks_app.command("dead")
def webhooks_dead(
    webhook: OfWebhook = None,
    last: Annotated[int, typer.Option("--last", help="How many, newest first (1 to 1000).")] = 100,
    as_json: AsJson = False,
) -> None:
    """The dead letter: deliveries whose every attempt failed; `factory webhooks replay` sends them again."""
    _show_deliveries(webhook, "dead", last, as_json)


def _show_deliveries(webhook: str | None, status: str | None, last: int, as_json: bool) -> None:
    async def go(factory: Factory) -> list[Delivery]:
        from factory.wiring import webhooks

        return await webhooks(factory).deliveries(webhook_id=webhook, status=status, last=last)

    rows: list[Delivery] = with_factory(go)
    if as_json:
        print_json([d.model_dump(mode="json", exclude={"payload"}) for d in rows])
        return
    if not rows:
        echo("no deliveries" + (f" {status}" if status else "") + (f" of {webhook}" if webhook else ""))
    for d in rows:
        echo(_delivery_line(d))


@webhooks_app.command("replay")
def webhooks_replay(
    delivery_id: Annotated[str | None, typer.Argument(help="The dead delivery's id (dlv-…).")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every dead delivery (of --webhook, if given).")] = False,
    webhook: OfWebhook = None,
) -> None:
    """Send dead deliveries again (back to pending, attempts reset): one by id, or --all."""
    from api.webhooks.validation import check_id

    if (delivery_id is None) == (not replay_all):
        err("give one dead delivery's id, or --all (see `factory webhooks dead`)", EXIT_INPUT)
    checked = _checked(check_id, delivery_id, "delivery") if delivery_id is not None else None
    hook = _checked(check_id, webhook) if webhook is not None else None
    settings = load_settings()
    who = who_decides(settings, None)

    async def go(factory: Factory) -> int:
        from factory.wiring import webhooks

        service = webhooks(factory)
        if checked is not None:
            await service.replay(checked, by=who)
            return 1
        return await service.replay_all(webhook_id=hook, by=who)

    count: int = with_factory(go, settings)
    if checked is not None:
        echo(f"delivery {checked} replayed: a worker sends it again now")
    else:
        echo(f"{count} dead deliveries replayed" + (": a worker sends them again now" if count else ""))


@webhooks_app.command("test")
def webhooks_test(webhook_id: WebhookId, as_json: AsJson = False) -> None:
    """Send a signed ping (webhook.test) now and say what the receiver answered (exit 1 if not 2xx)."""
    from api.webhooks.validation import check_id

    checked = _checked(check_id, webhook_id)

    async def go(factory: Factory) -> Attempt:
        from factory.wiring import webhooks

        return await webhooks(factory).test(checked)

    attempt: Attempt = with_factory(go)
    if as_json:
        print_json({"ok": attempt.ok, "status": attempt.status, "error": attempt.error,
                    "elapsed_ms": round(attempt.elapsed_ms, 1)})  # fmt: skip
    elif attempt.ok:
        echo(f"webhook {checked} answered {attempt.status} in {attempt.elapsed_ms:.0f} ms")
    else:
        echo(f"webhook {checked} failed after {attempt.elapsed_ms:.0f} ms: {attempt.error}")
    if not attempt.ok:
        raise typer.Exit(EXIT_FAILED)


def _hook(hook: Webhook) -> dict[str, Any]:
    return hook.model_dump(mode="json")


def _delivery_line(d: Delivery) -> str:
    when = d.created_at.isoformat(timespec="seconds") if d.created_at else "-"
    answer = f"HTTP {d.last_status}" if d.last_status is not None else ""
    error = f" {d.last_error}" if d.last_error and d.status.value != "delivered" else ""
    replays = f" (replayed {d.replays}x)" if d.replays else ""
    return (
        f"{d.id}  {when}  {d.webhook_id}  {d.event_type:19}  {d.status.value:9}  attempts {d.attempts}"
        f"  {answer}{error}{replays}  run {d.run_id or '-'}"
    )
