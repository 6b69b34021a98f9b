"""What the front doors do, once: submit, decide, cancel, revise and read, on one factory's services.

The chat, the REST API and the MCP server are adapters (DESIGN §13): each turns a button, a request
or a tool call into a call here and shows the outcome. Every rule lives below (the engine validates
requirements and pipelines, the desk decides, the queue orders the attention list); what lives here
is the part every front door needs after such a call: seeing that something continues the run.

A run never lives in a request or a socket. After a submission or a decision a worker is woken; when
none is alive, this process drives the run in a background task it owns (``Drivers``), so a dropped
connection changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from factory.errors import InputError, RunBusy, RunNotFound
from factory.wiring import Factory
from factory.worker import wake_if_alive, workers_alive
from hitl.attention import Attention, attention
from hitl.base import Escalation
from hitl.desk import BatchOutcome
from observability.text import unstorable
from teams.base import Run, RunStatus, StoredArtifact
from teams.pipeline import RunOutcome

if TYPE_CHECKING:
    from memory.base import AuditEntry, AuditHit, AuditReport
    from memory.qa import Answer
    from teams.usage_report import UsageReport

log = logging.getLogger(__name__)

#: How long a background driver waits for a process that holds a run only for a moment.
DRIVE_WAIT_S = 10.0
#: A run handed to the workers is driven here if, this long after, no worker is alive (heartbeats
#: last at most 3 polls + 1 s: 7 s by default).
TAKEOVER_S = 8.0
#: A question, not a document: its words are embedded and sent to a model.
MAX_QUESTION_BYTES = 8 * 1024
Decision = Literal["answer", "approve", "reject", "defer"]
DECISIONS: tuple[Decision, ...] = ("answer", "approve", "reject", "defer")
#: Who continues a run after a front door touched it.
Continuer = Literal["worker", "here", "nobody"]


class Drivers:
    """Background drivers of runs that no worker picked up, owned by the process (never a socket).

    At most ``limit`` runs are driven at once (``FACTORY_WORKER_RUNS``, as a worker); more wait for a
    slot. A run asked for while this process still drives it (a decision arriving as its driver lets
    go) is driven once more after, so no decision is left unseen. A run handed to a worker that is gone
    by ``TAKEOVER_S`` later (killed after its last heartbeat) is driven here; ``sweep`` drives what no
    live worker will (runs left by a process that stopped) while none is alive.
    """

    def __init__(self, factory: Factory, *, limit: int | None = None) -> None:
        self._f = factory
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._slots = asyncio.Semaphore(limit or factory.settings.worker_runs)

    async def nudge(self, run_id: str) -> Continuer:
        """Wake a worker for ``run_id``, or drive it here when none is alive."""
        f = self._f
        if await wake_if_alive(f.redis, f.settings.redis_prefix, run_id):
            self.spawn(f"watch {run_id}", lambda: self._unless_taken(run_id))
            return "worker"
        self.spawn(run_id, lambda: self._drive(run_id), again=True)
        return "here"

    def spawn(self, key: str, make: Callable[[], Coroutine[Any, Any, None]], *, again: bool = False) -> None:
        """Run ``make()`` in a task of this process unless one for ``key`` already runs; ``again``: then
        run it once more when that one ends (the state it acts on changed meanwhile)."""
        running = self._tasks.get(key)
        if running is not None and not running.done():
            if again:
                self._again.add(key)
            return
        self._tasks[key] = asyncio.create_task(self._owned(key, make), name=f"drive {key}")

    def active(self) -> list[str]:
        """The runs and sessions this process drives (or watches) right now."""
        return [key for key, task in self._tasks.items() if not task.done()]

    async def aclose(self) -> None:
        """Stop every driver (a run keeps its state; a worker or `factory resume` continues it)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._again.clear()

    async def settled(self, timeout_s: float) -> None:
        """Wait (bounded) until no driver of this process runs: for tests and a graceful stop."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def sweep(self, stop: asyncio.Event, every_s: float | None = None) -> None:
        """Until ``stop``: every ``every_s`` (``FACTORY_SWEEP_S``), while no worker is alive, drive the
        runs that can move (submitted, decided, or left by a process that stopped), as a worker would."""
        from factory.worker import Worker

        every_s = every_s or self._f.settings.sweep_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return
            try:
                if await workers_alive(self._f.redis, self._f.settings.redis_prefix):
                    continue
                async with self._slots:
                    step = await Worker(self._f, poll_s=every_s).resume_pass()
                for outcome in step.resumed:
                    log.info("no worker is alive: this process drove %s (%s)", outcome.run.id, outcome.run.status.value)
            except Exception as exc:  # a database or Redis hiccup: the next sweep tries again
                log.warning("could not look for runs to drive: %s", exc)

    async def _owned(self, key: str, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            while True:
                await make()
                if key not in self._again:
                    return
                self._again.discard(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # the run keeps its state; a worker or `factory resume` continues it
            log.exception("this process's driver of %s stopped", key)
        finally:
            self._tasks.pop(key, None)
            self._again.discard(key)

    async def _drive(self, run_id: str) -> None:
        async with self._slots:
            deadline = asyncio.get_running_loop().time() + DRIVE_WAIT_S
            while True:
                try:
                    await self._f.engine.drive(run_id)
                    return
                except RunBusy:  # a worker (or a deciding CLI) has it: it drives the run
                    if asyncio.get_running_loop().time() >= deadline:
                        return
                    await asyncio.sleep(0.25)

    async def _unless_taken(self, run_id: str) -> None:
        """``TAKEOVER_S`` after handing ``run_id`` to the workers: drive it here if it still waits to be
        driven and no worker is alive any more (the one woken died after its last heartbeat)."""
        await asyncio.sleep(TAKEOVER_S)
        f = self._f
        if await workers_alive(f.redis, f.settings.redis_prefix):
            return  # a live worker takes it from the run queue, however busy it is now
        run = await f.store.get_run(run_id)
        if run is None or run.status not in (RunStatus.RUNNING, RunStatus.WAITING_HUMAN):
            return
        if run.status is RunStatus.WAITING_HUMAN and await f.escalations.list_open(run_id, brief=True):
            return
        log.warning("the worker woken for run %s is gone; this process drives it", run_id)
        with contextlib.suppress(RunBusy):
            async with self._slots:
                await f.engine.drive(run_id)


def check_question(question: str) -> str:
    """``question`` if it can be asked of memory, else ``InputError`` saying why."""
    if not question.strip():
        raise InputError("the question is empty; ask e.g. 'which database did we choose for the URL shortener?'")
    if problem := unstorable(question):
        raise InputError(f"the question {problem}")
    if len(question.encode()) > MAX_QUESTION_BYTES:
        raise InputError(f"the question is over {MAX_QUESTION_BYTES} bytes; ask it in a few sentences")
    return question


def check_query(query: str) -> str:
    """``query`` if the audit can be searched for it, else ``InputError`` saying why."""
    from memory.search_bounds import bounded_query

    if not query.strip():
        raise InputError("the query is empty; give words to look for, e.g. 'postgres schema'")
    bounded_query(query)
    return query


@dataclass(frozen=True)
class Decided:
    """A decision and what happens to its run next, in words a person reads."""

    escalation: Escalation
    continued_by: Continuer
    next_step: str


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first; ``next_before``: pass it as ``before`` for the next page."""

    runs: list[Run]
    next_before: str | None


def page_cursor(run: Run) -> str:
    """Where the page after ``run`` starts: its creation time and id (runs created in the same instant
    are told apart by their ids)."""
    return f"{run.created_at.isoformat()}~{run.id}"


def parse_cursor(text: str) -> tuple[datetime, str]:
    at, _, run_id = text.rpartition("~")
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        when = None
    if when is None or not run_id or len(text) > 300:
        raise InputError(f"{text[:60]!r} is not a page cursor; pass the next_before of the previous page")
    return when if when.tzinfo else when.replace(tzinfo=UTC), run_id


class Operations:
    """Every front door's operations on one ``Factory``; see the module docstring."""

    def __init__(self, factory: Factory, drivers: Drivers | None = None) -> None:
        self.factory = factory
        self.drivers = drivers or Drivers(factory)
        self._attention: tuple[float, Attention] | None = None  # (read at, the list) for ``recent``
        self._reading: asyncio.Task[Attention] | None = None
        self._generation = 0  # counts the changes made here (a read from before one is not kept)

    # runs -------------------------------------------------------------------------------------------

    async def submit(
        self, requirement: str, pipeline: str = "phase1", *, by: str | None = None
    ) -> tuple[Run, Continuer]:
        """Validate and store a new run (``by``: who submitted it, audited), then see that something drives it."""
        run = await self.factory.engine.submit(requirement, pipeline, by=by)
        return run, await self.drivers.nudge(run.id)

    async def run(self, run_id: str) -> RunOutcome:
        """A run with its stages, open escalations and audit state; ``RunNotFound`` if unknown."""
        return await self.factory.engine.outcome(run_id)

    async def runs(self, *, statuses: Sequence[RunStatus] = (), limit: int = 20, before: str | None = None) -> RunPage:
        """Runs newest first, optionally only in ``statuses``, after the page cursor ``before``."""
        if not 1 <= limit <= 200:
            raise InputError("limit must be between 1 and 200")
        after = parse_cursor(before) if before is not None else None
        runs = await self.factory.store.page_runs(statuses=statuses, limit=limit + 1, before=after)
        more = len(runs) > limit
        runs = runs[:limit]
        return RunPage(runs, page_cursor(runs[-1]) if more and runs else None)

    async def cancel(self, run_id: str, *, by: str, reason: str | None = None) -> Run:
        """Cancel a run, even while another process drives it (see ``PipelineEngine.cancel``)."""
        try:
            return await self.factory.engine.cancel(run_id, by=by, reason=reason)
        finally:
            self._changed()

    async def revise(
        self, run_id: str, *, from_team: str, feedback: str, by: str | None = None
    ) -> tuple[Run, Continuer]:
        """Create a revision of ``run_id`` from ``from_team`` on with ``feedback`` (``by``: who asked, audited),
        and see it driven."""
        from teams.revision import submit_revision

        f = self.factory
        run = await submit_revision(f.engine, f.store, f.audit, run_id, from_team, feedback, by=by)
        return run, await self.drivers.nudge(run.id)

    async def artifacts(self, run_id: str) -> list[StoredArtifact]:
        """The files a run's teams produced (names, sizes, hashes); ``RunNotFound`` if no such run."""
        if await self.factory.store.get_run(run_id) is None:
            raise RunNotFound(f"no run {run_id!r}")
        return await self.factory.store.artifacts(run_id)

    # decisions ---------------------------------------------------------------------------------------

    async def attention(self, *, recent_s: float = 0.0) -> Attention:
        """What waits on a human, most urgent first, with the summary (each without its context: see
        ``escalation``). ``recent_s``: a list read at most that long ago will do; an older one is
        answered while a fresh read runs (one for all callers), so many dashboards polling cost one
        query now and then and none waits on it; a decision made through these operations is seen at
        once (the next call reads afresh)."""
        loop = asyncio.get_running_loop()
        cached, reading = self._attention, self._reading
        if recent_s > 0 and cached is not None:
            if loop.time() - cached[0] > recent_s and (reading is None or reading.done()):
                self._reading = asyncio.create_task(self._read_attention())
                self._reading.add_done_callback(_logged)  # nobody awaits it: its failure is logged here
            return cached[1]
        if reading is None or reading.done():
            reading = self._reading = asyncio.create_task(self._read_attention())
        return await asyncio.shield(reading)

    async def _read_attention(self) -> Attention:
        started, generation = asyncio.get_running_loop().time(), self._generation
        waiting = await self.factory.escalations.list_open(brief=True)
        summary = attention(waiting, self.factory.desk.policy, datetime.now(UTC))
        if generation == self._generation:  # read before a change made here: not kept as current
            self._attention = (started, summary)
        return summary

    def _changed(self) -> None:
        """The attention list changed here: the next read is fresh."""
        self._generation += 1
        self._attention = None
        self._reading = None

    async def escalation(self, escalation_id: str) -> Escalation:
        from factory.errors import EscalationNotFound

        found = await self.factory.escalations.get(escalation_id)
        if found is None:
            raise EscalationNotFound(f"no escalation {escalation_id!r}; see the attention list")
        return found

    async def decide(
        self,
        kind: str,
        escalation_id: str,
        *,
        by: str,
        text: str | None = None,
        version: int | None = None,
        until: datetime | None = None,
    ) -> Decided:
        """One decision (the desk's rules: reasons required, who decided first wins), then the run is
        continued once nothing else blocks it."""
        desk = self.factory.desk
        if kind == "answer":
            decided = await desk.answer(escalation_id, text or "", by=by, version=version)
        elif kind == "approve":
            decided = await desk.approve(escalation_id, by=by, notes=text or None, version=version)
        elif kind == "reject":
            decided = await desk.reject(escalation_id, reason=text or "", by=by, version=version)
        elif kind == "defer":
            decided = await desk.defer(escalation_id, until=until, by=by, version=version)
        else:
            raise InputError(f"unknown decision {kind!r}; the decisions are {', '.join(DECISIONS)}")
        self._changed()
        continued_by, next_step = await self.continue_after(decided)
        return Decided(decided, continued_by, next_step)

    async def batch_approve(
        self, escalation_ids: Sequence[str] | None, *, by: str, notes: str | None = None
    ) -> BatchOutcome:
        """Approve several low-risk escalations (``None``: every waiting one); each run they free continues."""
        outcome = await self.factory.desk.batch_approve(
            None if escalation_ids is None else list(escalation_ids), by=by, notes=notes
        )
        self._changed()
        for run_id in dict.fromkeys(e.run_id for e in outcome.approved):
            if not await self.factory.escalations.list_open(run_id):
                await self.drivers.nudge(run_id)
        return outcome

    async def continue_after(self, decided: Escalation) -> tuple[Continuer, str]:
        """Who continues ``decided``'s run, having woken it (or why it keeps waiting)."""
        if decided.waiting:  # deferred
            return "nobody", f"run {decided.run_id} keeps waiting on it"
        still = await self.factory.escalations.list_open(decided.run_id, brief=True)
        if still:
            return "nobody", f"run {decided.run_id} still waits on {', '.join(e.id for e in still)}"
        # (a run that ended meanwhile, e.g. cancelled, is left alone by whoever is woken: drive() sees it)
        who = await self.drivers.nudge(decided.run_id)
        run_id = decided.run_id
        return who, f"a factory worker continues run {run_id}" if who == "worker" else f"run {run_id} continues"

    # reads ------------------------------------------------------------------------------------------

    async def is_group_chat(self, chain_id: str) -> bool:
        """Whether ``chain_id`` names a group-chat session (its audit chain is keyed by its id);
        ``RunNotFound`` for a session id no session has."""
        if not chain_id.startswith("gc-"):
            return False
        from factory.wiring import group_chats

        await group_chats(self.factory).get(chain_id)
        return True

    async def audit_entries(self, chain_id: str) -> list[AuditEntry]:
        """A run's (or a group chat's) audit entries, oldest first; ``RunNotFound`` if neither."""
        if not await self.is_group_chat(chain_id) and await self.factory.store.get_run(chain_id) is None:
            raise RunNotFound(f"no run {chain_id!r}")
        return await self.factory.audit.entries(chain_id)

    async def audit_verify(self, chain_id: str) -> AuditReport:
        """Check a run's audit chain, its head and its bundle's manifest anchor (a group chat: its chain)."""
        from teams.snapshot import verify_run

        if await self.is_group_chat(chain_id):
            return await self.factory.audit.verify(chain_id)
        run = await self.factory.store.get_run(chain_id)
        if run is None:
            raise RunNotFound(f"no run {chain_id!r}")
        return await verify_run(self.factory.audit, run)

    async def audit_search(self, query: str, *, limit: int = 20) -> list[AuditHit]:
        """Every past run's audit entries matching all words of ``query``, best first."""
        check_query(query)
        if not 1 <= limit <= 500:
            raise InputError("limit must be between 1 and 500")
        return await self.factory.audit.search(query, limit=limit)

    async def ask(self, question: str, *, run_id: str | None = None) -> Answer:
        """Answer a question about a run (or the whole factory) from memory, citing what it used."""
        check_question(question)
        if run_id is not None and await self.factory.store.get_run(run_id) is None:
            raise RunNotFound(f"no run {run_id!r}; see the run ids in 'factory audit search'")
        return await self.factory.qa.ask(question, run_id=run_id)

    async def usage(self, *, run_id: str | None = None, last: int | None = None, by: str = "team") -> UsageReport:
        """Tokens, cost, calls and latency per team, alias or model (``factory usage``)."""
        from teams.usage_report import usage_report, usage_scope

        scope, grouping = usage_scope(run_id, last, by)
        return await usage_report(self.factory.pool, scope, grouping)

    async def aclose(self) -> None:
        await self.drivers.aclose()


def _logged(task: asyncio.Task[Attention]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("the attention list could not be read afresh: %s", exc)


@contextlib.asynccontextmanager
async def operating(factory: Factory) -> Any:
    """``Operations`` on ``factory`` whose drivers stop when the block ends."""
    ops = Operations(factory)
    try:
        yield ops
    finally:
        await ops.aclose()
