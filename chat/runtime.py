"""The chat process's services: one ``Factory`` for every session, the live-event hub, and the
drivers of runs no worker picked up. No Chainlit here: the app module and tests share it.

Runs never live in a websocket handler. A submitted run is stored and handed to the workers
(``wake_workers``); when no worker is alive the process drives it itself in a background task
that belongs to the process, not to any session, so a closed tab or a dropped socket changes
nothing. Group chat sessions go the same way (``nudge_session``). Sessions only subscribe to the
hub, which follows the factory-wide event stream in Redis (one reader per process) and fans each
event out to every subscribed session's bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from factory.errors import RunBusy
from factory.operations import Operations
from factory.settings import Settings
from factory.wiring import Factory, group_chats, open_factory, responders_for_run
from factory.worker import wake_workers, workers_alive
from observability.base import Event
from observability.redis_stream import tail_events
from teams.base import Run
from teams.groupchat.base import SessionStatus

if TYPE_CHECKING:
    from teams.groupchat import GroupChats

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000  # events per session before the oldest are dropped (the view then rereads the store)
DRIVE_WAIT_S = 10.0  # how long a background driver waits for a process that holds a session only for a moment
#: A group chat handed to the workers that none of them took up within this long is driven here
#: (a worker that is busy, dying, or too old to drive sessions must not leave it unheard).
TAKEOVER_S = 8.0


@dataclass(eq=False)
class Subscription:
    """One session's view of the hub: a bounded queue, and whether it overflowed since last read."""

    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False

    def put(self, event: Event) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.overflowed = True
        self.queue.put_nowait(event)

    async def batch(self, wait_s: float, linger_s: float) -> list[Event]:
        """What arrived: waits up to ``wait_s`` for a first event, then ``linger_s`` for those that
        follow it (so a burst becomes one UI update), then takes everything queued."""
        try:
            first = await asyncio.wait_for(self.queue.get(), wait_s)
        except TimeoutError:
            return []
        await asyncio.sleep(linger_s)
        events = [first]
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events


class Hub:
    """Follows ``{prefix}events`` from now on and copies each event to every subscription."""

    def __init__(self, factory: Factory) -> None:
        self._f = factory
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.last_id = "$"

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="chat-event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def _follow(self) -> None:
        stream = f"{self._f.settings.redis_prefix}events"
        async for last, events in tail_events(self._f.redis, stream, start=self.last_id):
            self.last_id = last
            for event in events:
                for sub in tuple(self._subs):
                    sub.put(event)


class Runtime:
    """Opened once per chat process (Chainlit's app start-up), closed at its shutdown."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self._factory: Factory | None = None
        self._stack: AsyncExitStack | None = None
        self._opening = asyncio.Lock()
        self.hub: Hub | None = None
        self._ops: Operations | None = None
        self._stop_sweep = asyncio.Event()
        self._sweep: asyncio.Task[None] | None = None  # runs no live worker will drive
        self._database_url: str | None = None
        self._chats: GroupChats | None = None
        self._warm: asyncio.Task[object] | None = None

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def factory(self) -> Factory:
        if self._factory is None:
            raise RuntimeError("the chat runtime is not open yet")
        return self._factory

    @property
    def chats(self) -> GroupChats:
        """The group-chat service on this process's factory (built on first use: it loads AutoGen)."""
        if self._chats is None:
            self._chats = group_chats(self.factory)
        return self._chats

    @property
    def database_url(self) -> str:
        """The factory's database (known from the first open on, also after close)."""
        if self._database_url is None:
            raise RuntimeError("the chat runtime was never opened")
        return self._database_url

    async def open(self) -> Factory:
        async with self._opening:
            if self._factory is not None:
                return self._factory
            if self.settings is None:
                raise RuntimeError("chat runtime: configure(settings) first (chat.serve does)")
            stack = AsyncExitStack()
            try:
                factory = await stack.enter_async_context(
                    open_factory(self.settings, serve=responders_for_run(self.settings))
                )
            except BaseException:
                await stack.aclose()
                raise
            self._stack, self._factory = stack, factory
            self._ops = Operations(factory)
            self._stop_sweep = asyncio.Event()
            self._sweep = asyncio.create_task(self._ops.drivers.sweep(self._stop_sweep), name="sweep")
            self._database_url = factory.endpoints.database_url
            self.hub = Hub(factory)
            self.hub.start()
            # Group chat's engine (AutoGen) loads off the event loop, before an operator opens a session.
            self._warm = asyncio.create_task(asyncio.to_thread(importlib.import_module, "teams.groupchat.service"))
            return factory

    async def close(self) -> None:
        self._stop_sweep.set()
        if self._sweep is not None:
            await asyncio.gather(self._sweep, return_exceptions=True)
            self._sweep = None
        if self._ops is not None:
            await self._ops.aclose()  # its drivers: runs and sessions this process drives
        if self._warm is not None:
            await asyncio.gather(self._warm, return_exceptions=True)
        if self.hub is not None:
            await self.hub.stop()
        if self._stack is not None:
            await self._stack.aclose()
        self._factory = self._stack = self.hub = self._chats = self._ops = None

    @property
    def ops(self) -> Operations:
        """The front doors' shared operations on this process's factory (DESIGN §13)."""
        if self._ops is None:
            raise RuntimeError("the chat runtime is not open yet")
        return self._ops

    async def submit(self, requirement: str, pipeline: str, *, by: str | None = None) -> Run:
        """Store a new run and see that something drives it (a worker, else this process); ``by``: the
        operator who submitted it (audited)."""
        run, _ = await self.ops.submit(requirement, pipeline, by=by)
        return run

    async def nudge(self, run_id: str) -> str:
        """After a submission or a decision: wake a worker, or drive the run here when none is alive.
        Returns who continues it ("worker" or "chat")."""
        return "worker" if await self.ops.drivers.nudge(run_id) == "worker" else "chat"

    async def nudge_session(self, session_id: str) -> str:
        """After a group chat was opened (or found unattended): wake a worker, else drive it here, in a
        task of this process (never of a socket). A session no worker took up within ``TAKEOVER_S`` is
        driven here too. Returns who continues it ("worker" or "chat")."""
        f = self.factory
        if await workers_alive(f.redis, f.settings.redis_prefix):
            await wake_workers(f.redis, f.settings.redis_prefix, session_id)
            self._spawn(session_id, lambda: self._take_over(session_id))
            return "worker"
        self._spawn(session_id, lambda: self._drive_session(session_id))
        return "chat"

    def _spawn(self, key: str, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.ops.drivers.spawn(key, make)

    async def _take_over(self, session_id: str) -> None:
        await asyncio.sleep(TAKEOVER_S)
        if (await self.chats.get(session_id)).status is not SessionStatus.RUNNING:
            return
        if session_id not in await self.chats.orphaned():  # a worker holds it: nothing to do here
            return
        log.warning("no worker took up group chat %s within %.0f s; this chat process drives it", session_id,
                    TAKEOVER_S)  # fmt: skip
        with contextlib.suppress(RunBusy):  # a worker took it meanwhile
            await self.chats.drive(session_id)

    async def _drive_session(self, session_id: str) -> None:
        deadline = asyncio.get_running_loop().time() + DRIVE_WAIT_S
        while True:
            try:
                await self.chats.drive(session_id)
                return
            except RunBusy:  # a worker (or the CLI) drives it
                if asyncio.get_running_loop().time() >= deadline:
                    return
                await asyncio.sleep(0.25)

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[Subscription]:
        if self.hub is None:
            raise RuntimeError("the chat runtime is not open yet")
        sub = self.hub.subscribe()
        try:
            yield sub
        finally:
            if self.hub is not None:
                self.hub.unsubscribe(sub)


runtime = Runtime()
