"""``GroupChats``: the one service every front door calls (see the package docstring)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime

from factory.errors import BudgetExceeded, InputError, RunBusy, RunNotFound
from teams.base import Run
from teams.groupchat.base import (
    MAX_INTERJECTION_CHARS,
    MAX_TEAMS,
    MAX_TOPIC_CHARS,
    MIN_TEAMS,
    ChatEntry,
    GroupChatOptions,
    GroupChatSession,
    Interjection,
    SessionStatus,
)
from teams.groupchat.deps import GroupChatDeps
from teams.groupchat.driver import Discussion, TurnFailed, emit
from teams.groupchat.outcome import conclude
from teams.lease import Lease
from teams.roster import team

log = logging.getLogger(__name__)

_SESSION_ID = re.compile(r"^gc-\d{8}-\d{6}-[0-9a-f]{8}$")


def new_session_id(now: datetime) -> str:
    return f"gc-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def parse_teams(teams: str | Sequence[str]) -> list[str]:
    """``a,b,c`` or a list: 2..8 distinct teams of the roster, or ``InputError``/``UnknownTeam``."""
    names = [t.strip() for t in (teams.split(",") if isinstance(teams, str) else teams)]
    if any(not n for n in names):
        raise InputError("a team name is empty; separate team slugs with single commas")
    for name in names:
        team(name)  # UnknownTeam, naming the valid ones
    if len(set(names)) != len(names):
        raise InputError("a team is named twice; each team takes part once")
    if not MIN_TEAMS <= len(names) <= MAX_TEAMS:
        raise InputError(f"a group chat needs {MIN_TEAMS} to {MAX_TEAMS} teams; {len(names)} given")
    return names


def _text(text: str, what: str, limit: int) -> str:
    text = text.strip()
    if not text:
        raise InputError(f"the {what} is empty; write what the teams should hear")
    if len(text) > limit:
        raise InputError(f"the {what} has {len(text)} characters, over {limit}; shorten it")
    if "\x00" in text:
        raise InputError(f"the {what} contains a NUL character; remove it")
    return text


class GroupChats:
    """Open, drive, watch, join and conclude group-chat sessions."""

    def __init__(self, deps: GroupChatDeps) -> None:
        self._d = deps

    @property
    def deps(self) -> GroupChatDeps:
        return self._d

    # -- opening and driving -------------------------------------------------------------------

    async def open(
        self, topic: str, teams: str | Sequence[str], *, by: str, options: GroupChatOptions | None = None
    ) -> GroupChatSession:
        """Validate and store a new session (not yet driven): ``drive`` it here, or hand its id to
        whatever drives sessions. Unknown or too few teams, an empty topic: ``InputError``."""
        slugs = parse_teams(teams)
        topic = _text(topic, "topic", MAX_TOPIC_CHARS)
        now = datetime.now(UTC)
        session = GroupChatSession(
            id=new_session_id(now), topic=topic, teams=slugs, options=options or GroupChatOptions(),
            status=SessionStatus.RUNNING, created_by=by, created_at=now, updated_at=now,
        )  # fmt: skip
        await self._d.store.create(session)
        created = {"topic": topic, "teams": slugs, "options": session.options.model_dump(mode="json"), "by": by}
        await self._d.audit.append(session.id, "groupchat.created", "groupchat.created", created)
        await emit(self._d, session.id, "opened", topic=topic, teams=slugs, by=by)
        return session

    async def drive(self, session_id: str) -> GroupChatSession:
        """Drive the session to its end (discussion, summary, memory, audit) and return it.

        Continues from the last saved message: after a crash, call it again (``resume``). One process
        drives a session at a time: ``RunBusy`` when another holds it. A failed turn leaves the session
        ``failed`` (``drive`` again to continue); ``LeaseLost`` if another process took it over."""
        session = await self.get(session_id)
        if session.status is SessionStatus.ENDED:
            return session
        async with self._lease(session_id) as lease:
            session = await self.get(session_id)  # as it is now that this process holds it
            if session.status is SessionStatus.ENDED:
                return session
            if session.status is SessionStatus.FAILED:
                await self._d.store.reopen(lease)
            reason = session.stop_reason
            if reason is None:
                discussion = Discussion(self._d, session, lease)
                try:
                    reason = await discussion.run()
                except BudgetExceeded:  # the factory's own budget for the session: it ends like ours
                    reason = "token_budget"
                except TurnFailed as exc:
                    await self._d.store.finish(lease, SessionStatus.FAILED, error=str(exc)[:2000])
                    await emit(self._d, session_id, "failed", error=str(exc)[:2000], teams=session.teams,
                               started_at=session.created_at.isoformat())  # fmt: skip
                    raise
                await self._d.store.end_discussion(lease, reason, elapsed_s=discussion.elapsed())
                session = await self.get(session_id)
            await conclude(self._d, session, lease, reason)
            await self._d.store.finish(lease, SessionStatus.ENDED)
        ended = await self.get(session_id)
        await emit(self._d, session_id, "ended", reason=ended.stop_reason, entries=ended.entries,
                   teams=ended.teams, started_at=ended.created_at.isoformat(),
                   summary=ended.summary.model_dump(mode="json") if ended.summary else None)  # fmt: skip
        return ended

    async def resume(self, session_id: str) -> GroupChatSession:
        """Continue a session whose process died (or that failed): ``drive`` from its saved state."""
        return await self.drive(session_id)

    async def start(
        self, topic: str, teams: str | Sequence[str], *, by: str, options: GroupChatOptions | None = None
    ) -> GroupChatSession:
        """``open`` then ``drive``, in this process (the CLI)."""
        return await self.drive((await self.open(topic, teams, by=by, options=options)).id)

    async def orphaned(self) -> list[str]:
        """Running sessions nobody drives (their process died): what a driver should ``resume``."""
        return await self._d.store.orphaned()

    @asynccontextmanager
    async def _lease(self, session_id: str) -> AsyncIterator[Lease]:
        async with AsyncExitStack() as stack:
            try:
                lease = await stack.enter_async_context(self._d.leases.lease(session_id))
            except RunBusy as exc:
                raise RunBusy(
                    f"group chat {session_id} is being driven by another process; watch it, or stop that"
                    " process and resume it"
                ) from exc
            yield lease

    # -- the operator, from any process -------------------------------------------------------------

    async def interject(self, session_id: str, text: str, *, by: str) -> Interjection:
        """Queue the operator's message: the next speaker hears it (the driver takes it between
        messages). ``InputError`` if the session is not running."""
        text = _text(text, "message", MAX_INTERJECTION_CHARS)
        queued = await self._d.store.interject(session_id, by, text)
        if queued is None:
            session = await self.get(session_id)
            why = f"has ended its discussion ({session.stop_reason})" if session.stop_reason else "is not running"
            raise InputError(f"group chat {session_id} {why}; nobody would hear the message")
        await emit(self._d, session_id, "interjection", id=queued.id, by=by, text=text)
        return queued

    async def stop(self, session_id: str, *, by: str) -> bool:
        """Ask the driver to end the session (between messages, or by cancelling the current one
        within ``poll_s``); the summary and memory follow. False if it was not running or a stop was
        already asked for."""
        await self.get(session_id)
        asked = await self._d.store.request_stop(session_id, by)
        if asked:
            await emit(self._d, session_id, "stop_requested", by=by)
        return asked

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, session_id: str) -> GroupChatSession:
        session = await self._d.store.get(session_id) if _SESSION_ID.match(session_id) else None
        if session is None:
            raise RunNotFound(f"no group chat {session_id!r}; list them with `factory groupchat list`")
        return session

    async def recent(self, *, limit: int = 20, status: SessionStatus | None = None) -> list[GroupChatSession]:
        """The latest sessions, newest first (``factory groupchat list``)."""
        return await self._d.store.recent(limit=max(1, min(limit, 200)), status=status)

    async def transcript(self, session_id: str, *, after_seq: int = -1, limit: int = 1000) -> list[ChatEntry]:
        """The transcript's lines after ``after_seq`` (a viewer catching up, then following events)."""
        await self.get(session_id)
        return await self._d.store.entries(session_id, after_seq=after_seq, limit=limit)

    async def interjections(self, session_id: str) -> list[Interjection]:
        await self.get(session_id)
        return await self._d.store.interjections(session_id)

    # -- after the discussion ----------------------------------------------------------------------

    async def to_requirement(self, session_id: str, *, by: str, pipeline: str = "phase1") -> Run:
        """ "Run this as a requirement": a pipeline run whose requirement is the session's summary,
        created by the same ``PipelineEngine.submit`` as every front door's runs (nothing drives it
        here: wake the workers, or nudge, as after any submission)."""
        if self._d.engine is None:
            raise InputError("this process has no pipeline engine to submit a run to")
        session = await self.get(session_id)
        if session.status is not SessionStatus.ENDED or session.summary is None:
            raise InputError(f"group chat {session_id} has no summary yet; it is {session.status.value}")
        requirement = (
            f"{session.topic}\n\nOutcome of the group chat {session.id} between {', '.join(session.teams)}:\n\n"
            f"{session.summary.as_text()}"
        )
        run = await self._d.engine.submit(requirement, pipeline)
        await self._d.store.add_run(session_id, run.id)
        await self._d.audit.append(
            session_id, f"groupchat.requirement.{run.id}", "groupchat.requirement",
            {"run_id": run.id, "pipeline": pipeline, "by": by},
        )  # fmt: skip
        await emit(self._d, session_id, "requirement", run_id=run.id, by=by)
        return run
