"""The group-chat side of ``factory worker``: sessions a front door handed over, and sessions left
running with nobody driving them, each driven to its end in a task of its own (see
``GroupChatDrives``)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from factory.errors import FactoryError, RunBusy
from observability.logs import log_context

if TYPE_CHECKING:
    from factory.wiring import Factory
    from teams.groupchat import GroupChats

log = logging.getLogger("factory.worker")

#: What a group-chat session's id starts with (a wake-up naming one hands the session to a worker).
GROUPCHAT_ID_PREFIX = "gc-"
#: A session nobody handed over, not begun and younger than this, is left to the process that opened
#: it: ``GroupChats.start`` opens, then takes the session's lease, and holds none in between.
NEW_SESSION_GRACE_S = 5.0
#: A session whose drive failed here but stayed running (not ``failed``: e.g. memory unreachable
#: before its first turn) is tried again by this worker after this long, not on every poll.
RETRY_AFTER_S = 60.0


class GroupChatDrives:
    """The group-chat sessions one worker drives, ``concurrency`` at once, each ``GroupChats.drive`` a
    task of its own: the sessions handed over by a wake-up (``wake``), and on every poll the running
    ones nobody drives (``orphaned``: never driven, or their driver died). Another process driving
    one (``RunBusy``) is normal; a failed drive is logged with the session id and never stops the
    worker. On stop the drives are cancelled: each lets its lease go (the message being written is
    not kept) and the next worker resumes the session from its last saved message."""

    def __init__(self, factory: Factory, *, poll_s: float, concurrency: int) -> None:
        from teams.groupchat import GroupChatStore  # no AutoGen: that comes with the first drive

        self._f = factory
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._store = GroupChatStore(factory.pool)
        self._chats: GroupChats | None = None
        self._woken: list[str] = []  # handed over, not yet taken (oldest first)
        self._retry_at: dict[str, float] = {}  # failed here: not taken up again before then
        self._wake = asyncio.Event()
        self.active: dict[str, asyncio.Task[None]] = {}

    def wake(self, session_id: str) -> None:
        """A front door handed ``session_id`` over: drive it as soon as a slot is free."""
        if session_id not in self._woken and len(self._woken) < 1000:
            self._woken.append(session_id)
        self._wake.set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Take sessions while a slot is free; wait for a wake-up, a drive to end, or the poll."""
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    for session_id in await self._wanted():
                        self.active[session_id] = asyncio.create_task(
                            self._drive(session_id), name=f"groupchat {session_id}"
                        )
                except Exception as exc:  # a service that comes back is used again on the next pass
                    known = isinstance(exc, FactoryError | RedisError | OSError)
                    log.warning("worker could not look for group chats: %s", exc, exc_info=not known)
                woken = asyncio.create_task(self._wake.wait())
                await asyncio.wait([woken, stopped, *self.active.values()], timeout=self._poll_s,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                woken.cancel()
                await asyncio.gather(woken, return_exceptions=True)
                for session_id, task in list(self.active.items()):
                    if task.done():
                        del self.active[session_id]
        finally:
            stopped.cancel()
            for task in self.active.values():
                task.cancel()
            await asyncio.gather(stopped, *self.active.values(), return_exceptions=True)
            self.active.clear()

    async def _wanted(self) -> list[str]:
        """The sessions to start now: handed over first, then the orphaned, up to the free slots."""
        free = self._concurrency - len(self.active)
        if free <= 0:
            return []
        wanted = [s for s in self._woken if s not in self.active][:free]
        self._woken = [s for s in self._woken if s not in wanted and s not in self.active]
        if len(wanted) < free:
            now = time.monotonic()
            self._retry_at = {s: at for s, at in self._retry_at.items() if at > now}
            for session_id in await self._store.orphaned(limit=20):
                if len(wanted) >= free:
                    break
                if session_id in self.active or session_id in wanted or session_id in self._retry_at:
                    continue
                if not await self._new(session_id):
                    wanted.append(session_id)
        return wanted

    async def _new(self, session_id: str) -> bool:
        """Whether the session was just opened and never spoke (its opener is about to drive it)."""
        session = await self._store.get(session_id)
        if session is None or session.entries:
            return False
        return (datetime.now(UTC) - session.created_at).total_seconds() < NEW_SESSION_GRACE_S

    async def chats(self) -> GroupChats:
        """The group-chat service, built on first use (AutoGen's import, off the event loop)."""
        if self._chats is None:
            import importlib

            from factory.wiring import group_chats

            await asyncio.to_thread(importlib.import_module, "teams.groupchat.service")
            self._chats = group_chats(self._f)
        return self._chats

    async def _drive(self, session_id: str) -> None:
        with log_context(run_id=session_id):
            try:
                session = await (await self.chats()).drive(session_id)
            except RunBusy:
                log.debug("group chat %s is driven by another process", session_id)
                return
            except Exception as exc:  # one session never stops the worker (it keeps its saved state)
                log.warning("worker could not drive group chat %s: %s", session_id, exc,
                            exc_info=not isinstance(exc, FactoryError))  # fmt: skip
                self._retry_at[session_id] = time.monotonic() + RETRY_AFTER_S
                return
            log.info("worker drove group chat %s: %s (%s)", session_id, session.status.value, session.stop_reason)
