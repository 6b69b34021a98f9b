"""Webhooks and their delivery log in PostgreSQL (``webhooks``, ``webhook_deliveries``).

A webhook's signing secret is sealed with the factory's secret key (AES-GCM, the same box as
``factory secrets``, bound to the webhook's id): a row holds its nonce and ciphertext, never the
secret. Due deliveries are claimed in one statement (``FOR UPDATE SKIP LOCKED``, autocommit), so
any number of senders share the log without taking a delivery twice (a sender looks past the rows
another is taking, within a window of four times what it asks for), and nothing depends on a
session: it works through PgBouncer in transaction mode, without prepared statements.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.webhooks.base import Claimed, Delivery, DeliveryStatus, Target, Webhook, WebhookFormat
from api.webhooks.in_memory import sealed_name
from api.webhooks.validation import shown_url
from factory.errors import ConfigError
from observability.text import storable
from routing.secrets import Sealed, SecretBox

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0702_webhooks",
        """
        CREATE TABLE IF NOT EXISTS webhooks (
            id text PRIMARY KEY,
            url text NOT NULL,
            events text[] NOT NULL,
            format text NOT NULL CHECK (format IN ('json', 'slack', 'discord')),
            secret_nonce bytea NOT NULL CHECK (octet_length(secret_nonce) = 12),
            secret_ciphertext bytea NOT NULL,
            active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            created_by text
        );
        CREATE TABLE IF NOT EXISTS webhook_deliveries (
            id text PRIMARY KEY,
            webhook_id text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
            event_type text NOT NULL,
            event_id text NOT NULL,
            run_id text,
            payload jsonb NOT NULL,
            status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
            attempts integer NOT NULL DEFAULT 0,
            last_status integer,
            last_error text,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            claim text,
            replays integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            delivered_at timestamptz,
            UNIQUE (webhook_id, event_id)
        );
        CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
            WHERE status = 'pending';
        CREATE INDEX IF NOT EXISTS webhook_deliveries_log ON webhook_deliveries (created_at DESC, id DESC);
        CREATE INDEX IF NOT EXISTS webhook_deliveries_of ON webhook_deliveries (webhook_id, status, created_at DESC);
        """,
    ),
]

_HOOK = "id, url, events, format, active, created_at, created_by"
_ROW = (
    "d.id, d.webhook_id, d.event_type, d.event_id, d.run_id, d.payload, d.status, d.attempts, d.last_status,"
    " d.last_error, d.next_attempt_at, d.created_at, d.delivered_at, d.replays"
)
_CLAIM = f"""
    WITH busy AS (
        SELECT * FROM unnest(%(busy_ids)s::text[], %(busy_counts)s::int[]) AS b (webhook_id, held)
    ), ranked AS (
        SELECT d.id, d.next_attempt_at, coalesce(b.held, 0)
                   + row_number() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id) AS nth
        FROM webhook_deliveries d
        JOIN webhooks w ON w.id = d.webhook_id AND w.active
        LEFT JOIN busy b ON b.webhook_id = d.webhook_id
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
    ), picked AS (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.id IN (SELECT id FROM ranked WHERE nth <= %(per)s ORDER BY next_attempt_at, id LIMIT %(window)s)
          AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at, d.id LIMIT %(limit)s
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, claim = %(token)s, next_attempt_at = now() + make_interval(secs => %(lease)s)
    FROM picked, webhooks w
    WHERE d.id = picked.id AND w.id = d.webhook_id
    RETURNING {_ROW}, w.url, w.format, w.secret_nonce, w.secret_ciphertext
"""
_FINISH = """
    UPDATE webhook_deliveries SET status = %(status)s, last_status = %(http_status)s, last_error = %(error)s,
        claim = NULL,
        next_attempt_at = CASE WHEN %(status)s = 'pending' THEN now() + make_interval(secs => %(retry)s)
                               ELSE next_attempt_at END,
        delivered_at = CASE WHEN %(status)s = 'delivered' THEN now() ELSE NULL END
    WHERE id = %(id)s AND claim = %(token)s AND status = 'pending'
    RETURNING id
"""
_REPLAY = """
    UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), claim = NULL,
        replays = replays + 1
    WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'dead' AND {where} ORDER BY created_at LIMIT %s)
      AND status = 'dead'
    RETURNING id
"""


class PostgresWebhookStore:
    """``WebhookStore`` on a psycopg pool (autocommit, as ``factory.wiring`` opens it); ``box`` is a
    ``SecretBox`` or what loads one when first needed (told whether it may create a key)."""

    def __init__(self, pool: AsyncConnectionPool, box: SecretBox | Callable[[bool], SecretBox]) -> None:
        self._pool = pool
        self._box: SecretBox | None = box if isinstance(box, SecretBox) else None
        self._load = box if not isinstance(box, SecretBox) else None

    def _sealer(self, *, create: bool) -> SecretBox:
        if self._box is None:
            assert self._load is not None
            self._box = self._load(create)
        return self._box

    def _open(self, webhook_id: str, nonce: bytes, ciphertext: bytes) -> str:
        try:
            return self._sealer(create=False).open(sealed_name(webhook_id), Sealed(bytes(nonce), bytes(ciphertext)))
        except ConfigError as exc:
            raise ConfigError(
                f"the signing secret of webhook {webhook_id} cannot be decrypted: the factory's secret key changed"
                " (FACTORY_SECRET_KEY or secret.key) or the row was altered; restore the key, or remove the webhook"
                " and add it again (a new secret for the receiver)"
            ) from exc

    async def add(
        self, webhook_id: str, url: str, events: Sequence[str], fmt: WebhookFormat, secret: str, *, by: str | None
    ) -> Webhook:
        sealed = self._sealer(create=True).seal(sealed_name(webhook_id), secret)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"INSERT INTO webhooks (id, url, events, format, secret_nonce, secret_ciphertext, created_by)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_HOOK}",
                (webhook_id, url, list(events), fmt.value, sealed.nonce, sealed.ciphertext, by),
            )
            row = await cur.fetchone()
        assert row is not None
        return _webhook(row)

    async def list(self) -> builtins.list[Webhook]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_HOOK} FROM webhooks ORDER BY created_at, id")
            return [_webhook(r) for r in await cur.fetchall()]

    async def get(self, webhook_id: str) -> Webhook | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_HOOK} FROM webhooks WHERE id = %s", (webhook_id,))
            row = await cur.fetchone()
        return _webhook(row) if row else None

    async def target(self, webhook_id: str) -> Target | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT url, format, secret_nonce, secret_ciphertext FROM webhooks WHERE id = %s", (webhook_id,)
            )
            row = await cur.fetchone()
        if row is None:
            return None
        url, fmt, nonce, ciphertext = row
        return Target(webhook_id, url, WebhookFormat(fmt), self._open(webhook_id, nonce, ciphertext))

    async def remove(self, webhook_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("DELETE FROM webhooks WHERE id = %s RETURNING id", (webhook_id,))
            return await cur.fetchone() is not None

    async def set_active(self, webhook_id: str, active: bool) -> Webhook | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"UPDATE webhooks SET active = %s WHERE id = %s RETURNING {_HOOK}", (active, webhook_id)
            )
            row = await cur.fetchone()
        return _webhook(row) if row else None

    async def enqueue(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        rows = [(d.id, d.webhook_id, d.event_type, d.event_id, d.run_id, Jsonb(d.payload)) for d in deliveries]
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                INSERT INTO webhook_deliveries (id, webhook_id, event_type, event_id, run_id, payload)
                SELECT r.id, r.webhook_id, r.event_type, r.event_id, r.run_id, r.payload
                FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[])
                     AS r (id, webhook_id, event_type, event_id, run_id, payload)
                JOIN webhooks w ON w.id = r.webhook_id
                ON CONFLICT DO NOTHING
                RETURNING id
                """,
                [list(column) for column in zip(*rows, strict=True)],
            )
            return len(await cur.fetchall())

    async def claim(
        self, limit: int, *, per_webhook: int, busy: Mapping[str, int], lease_s: float
    ) -> builtins.list[Claimed]:
        if limit <= 0:
            return []
        token = secrets.token_hex(8)
        params = {
            "busy_ids": list(busy), "busy_counts": list(busy.values()), "per": per_webhook, "limit": limit,
            "window": limit * 4, "token": token, "lease": lease_s,
        }  # fmt: skip
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_CLAIM, params)
            rows = await cur.fetchall()
        claimed = []
        for row in sorted(rows, key=lambda r: (r["next_attempt_at"], r["id"])):
            target = Target(row["webhook_id"], row["url"], WebhookFormat(row["format"]),
                            self._open(row["webhook_id"], row["secret_nonce"], row["secret_ciphertext"]))  # fmt: skip
            claimed.append(Claimed(_delivery(row), target, token))
        return claimed

    async def finish(
        self,
        delivery_id: str,
        token: str,
        status: DeliveryStatus,
        *,
        http_status: int | None,
        error: str | None,
        retry_in_s: float = 0.0,
    ) -> bool:
        params = {
            "status": status.value, "http_status": http_status, "error": storable(error)[:500] if error else None,
            "retry": retry_in_s, "id": delivery_id, "token": token,
        }  # fmt: skip
        async with self._pool.connection() as conn:
            cur = await conn.execute(_FINISH, params)
            return await cur.fetchone() is not None

    async def deliveries(
        self, *, webhook_id: str | None = None, status: DeliveryStatus | None = None, last: int = 50
    ) -> builtins.list[Delivery]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                SELECT {_ROW} FROM webhook_deliveries d
                WHERE (%(hook)s::text IS NULL OR d.webhook_id = %(hook)s)
                  AND (%(status)s::text IS NULL OR d.status = %(status)s)
                ORDER BY d.created_at DESC, d.id DESC LIMIT %(last)s
                """,
                {"hook": webhook_id, "status": status.value if status else None, "last": last},
            )
            return [_delivery(r) for r in await cur.fetchall()]

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {_ROW} FROM webhook_deliveries d WHERE d.id = %s", (delivery_id,))
            row = await cur.fetchone()
        return _delivery(row) if row else None

    async def replay(self, delivery_id: str) -> Delivery | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(_REPLAY.format(where="id = %s"), (delivery_id, 1))
            if await cur.fetchone() is None:
                return None
        return await self.get_delivery(delivery_id)

    async def replay_all(self, *, webhook_id: str | None = None, limit: int = 10_000) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                _REPLAY.format(where="(%s::text IS NULL OR webhook_id = %s)"), (webhook_id, webhook_id, limit)
            )
            return len(await cur.fetchall())

    async def prune(self, *, older_than_days: float, limit: int = 1000) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                DELETE FROM webhook_deliveries WHERE id IN (
                    SELECT id FROM webhook_deliveries
                    WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => %s) LIMIT %s
                ) RETURNING id
                """,
                (older_than_days * 86400, limit),
            )
            return len(await cur.fetchall())


def _webhook(row: Any) -> Webhook:
    hook_id, url, events, fmt, active, created_at, created_by = row
    return Webhook(id=hook_id, url=shown_url(url), events=list(events), format=WebhookFormat(fmt), active=active,
                   created_at=created_at, created_by=created_by)  # fmt: skip


def _delivery(row: dict[str, Any]) -> Delivery:
    return Delivery(
        id=row["id"], webhook_id=row["webhook_id"], event_type=row["event_type"], event_id=row["event_id"],
        run_id=row["run_id"], payload=row["payload"], status=DeliveryStatus(row["status"]), attempts=row["attempts"],
        last_status=row["last_status"], last_error=row["last_error"], next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"], delivered_at=row["delivered_at"], replays=row["replays"],
    )  # fmt: skip
