"""A run as the chat shows it: a headline message, one step per stage (clarifications nested under
the asking stage), an escalation card per decision, and at the end the bundle, audit and pictures.

The view is always drawn from PostgreSQL (the run's record); live events only say *when* to redraw.
Element ids are derived from the run, stage and escalation ids, so reopening a thread, a second
operator, or a redraw after a dropped socket updates the same elements instead of adding copies;
and only what changed since the last draw is sent.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chainlit as cl

from chat import render
from chat.runtime import runtime
from hitl.base import Escalation
from teams.base import Run, RunStatus, StageRecord, StageStatus
from teams.records import checks_total
from teams.snapshot import verify_run

_NS = uuid.UUID("6f1d3c52-7a0e-4d0b-9a55-1f3e5c2b9d10")
TERMINAL = (RunStatus.COMPLETE, RunStatus.FAILED, RunStatus.CANCELLED)
ZIP_LIMIT_BYTES = 50 * 1024 * 1024


def element_id(*parts: object) -> str:
    return str(uuid.uuid5(_NS, ":".join(map(str, parts))))


def decision_actions(e: Escalation, role: str = "operator") -> list[cl.Action]:
    """The card's buttons: each carries the escalation id and the version the operator saw. A viewer
    gets none (and the server refuses a decision sent without a button anyway)."""
    if role != "operator":
        return []
    payload = {"id": e.id, "version": e.version}
    labels = {"answer": "Answer", "approve": "Approve", "reject": "Reject", "defer": "Defer"}
    return [cl.Action(name=f"decide_{name}", payload=payload, label=labels[name]) for name, _ in render.choices(e)]


@dataclass
class Drawn:
    """What was last sent for one element (so an unchanged element is not sent again)."""

    text: str
    sent: Any


@dataclass
class RunView:
    """One run in one thread. Element ids derive from the thread, the run and the element, so they
    are stable for the thread (a redraw updates, never duplicates) and distinct between threads
    (the history stores each thread's own)."""

    run_id: str
    thread_id: str
    role: str = "viewer"
    drawn: dict[str, Drawn] = field(default_factory=dict)
    actions: dict[str, list[cl.Action]] = field(default_factory=dict)  # per escalation card
    finished: bool = False
    known: set[str] = field(default_factory=set)  # ids the thread already holds (a resumed thread)

    def ident(self, *parts: object) -> str:
        return element_id(self.thread_id, self.run_id, *parts)

    async def draw(self, *, clarifications: bool = True) -> Run | None:
        """Bring every element of the run up to date with the store."""
        f = runtime.factory
        run = await f.store.get_run(self.run_id)
        if run is None:
            return None
        stages = await f.store.stages(self.run_id)
        await self._message("head", render.run_headline(run, stages))
        for stage in stages:
            if stage.status is StageStatus.PENDING and stage.attempts == 0:
                continue  # not reached yet
            await self._stage(stage)
        if clarifications:
            for n, c in enumerate(await self.clarifications()):
                parent = self.ident("stage", c.stage)
                await self._step(f"clar:{n}", render.clarification_title(c), render.clarification_body(c), parent)
        for e in await f.escalations.for_run(self.run_id):
            await self._card(e)
        if run.status in TERMINAL and not self.finished:
            self.finished = True
            await self._finish(run, stages)
        return run

    async def clarifications(self) -> list[render.Clarification]:
        entries = await runtime.factory.audit.entries(self.run_id)
        return [render.Clarification.from_audit(json.loads(e.payload)) for e in entries if e.kind == "clarification"]

    async def _stage(self, stage: StageRecord) -> None:
        await self._step(
            f"stage:{stage.index}",
            render.stage_title(stage),
            render.stage_body(stage),
            None,
        )

    async def _step(self, key: str, name: str, text: str, parent: str | None) -> None:
        """A step, collapsed (its title carries the status): a 17-stage run stays one screen."""
        ident = self.ident(*key.split(":"))
        drawn = self.drawn.get(key)
        if drawn is not None and drawn.text == name + text:
            return
        step = drawn.sent if drawn is not None else cl.Step(name=name, type="run", id=ident, parent_id=parent,
                                                               default_open=False, show_input=False)  # fmt: skip
        step.name, step.output = name, text
        if drawn is None and ident not in self.known:
            await step.send()
        else:
            await step.update()
        self.drawn[key] = Drawn(name + text, step)

    async def _message(self, key: str, text: str, actions: list[cl.Action] | None = None) -> cl.Message:
        ident = self.ident(*key.split(":"))
        drawn = self.drawn.get(key)
        if drawn is not None and drawn.text == text:
            return drawn.sent  # type: ignore[no-any-return]
        message = drawn.sent if drawn is not None else cl.Message(content=text, id=ident, actions=actions or [])
        message.content = text
        if drawn is None and ident not in self.known:
            await message.send()
        else:
            await message.update()
        self.drawn[key] = Drawn(text, message)
        return message

    async def _card(self, e: Escalation) -> None:
        key, ident = f"esc:{e.id}", self.ident("esc", e.id)
        text = render.escalation_card(e)
        first = key not in self.drawn
        if first and not e.waiting and ident not in self.known:
            return  # decided before this view ever showed it: the stage's step tells the story
        actions = decision_actions(e, self.role) if e.waiting and first else []
        await self._message(key, text, actions)
        if actions and ident in self.known:  # a reopened thread keeps its messages, not their buttons
            for action in actions:
                await action.send(for_id=ident)
        if actions:
            self.actions[e.id] = actions
        if not e.waiting:
            for action in self.actions.pop(e.id, []):
                await action.remove()

    async def _finish(self, run: Run, stages: list[StageRecord]) -> None:
        """The end of a run: its files (and a zip), the audit head with a verify button, pictures."""
        f = runtime.factory
        files = await f.store.artifacts(self.run_id)
        elements: list[Any] = []
        root = Path(run.artifacts_dir)
        for artifact in files[:60]:
            path = root / artifact.name
            if path.is_file():
                elements.append(cl.File(name=artifact.name, path=str(path), display="inline"))
        archive = _zip(root, [a.name for a in files])
        if archive is not None:
            elements.append(cl.File(name=f"{run.id}.zip", content=archive, display="inline", mime="application/zip"))
        report = await verify_run(f.audit, run)
        head, entries = report.head_sha256, report.entries
        words = render.RUN_WORDS.get(run.status, run.status.value)
        text = (
            f"**Run {words}.** {len(files)} artifact{'s' * (len(files) != 1)} in {render.code(run.artifacts_dir)}"
            f"\n\nAudit: {entries} entries, head {render.code(head)}"
        )
        checked = checks_total(s.checks for s in stages)
        if checked:
            checked["failing"] = [render.failing_by_stage(stages)] if checked["failed"] else []
            share = f"{checked['artifacts_checked']} of the {checked['artifacts_total']} files of checked stages"
            text += f"\n\nVerification: {render.checks_figures(checked)} · {share} looked at"
        verify = cl.Action(name="verify_audit", payload={"run_id": self.run_id}, label="Verify audit")
        msg = cl.Message(content=text, id=self.ident("end"), elements=elements, actions=[verify])
        await _show(msg, self.known)
        pictures = [
            cl.Plotly(name="pipeline", figure=render.pipeline_figure(stages, await self.clarifications()),
                      display="inline", size="large"),
            cl.Plotly(name="cost by team", figure=render.usage_figure(render.usage_by_team(stages),
                      "Tokens and cost by team (this run)"), display="inline", size="large"),
        ]  # fmt: skip
        table = render.usage_table(render.usage_by_team(stages))
        charts = cl.Message(content=table, id=self.ident("charts"), elements=pictures)
        await _show(charts, self.known)


async def _show(message: cl.Message, known: set[str]) -> None:
    """Send ``message``; in a reopened thread that holds it already, send only its files, pictures
    and buttons again (the history keeps the text; elements and actions are not stored)."""
    if message.id not in known:
        await message.send()
        return
    for element in message.elements or []:
        await element.send(for_id=message.id)
    for action in message.actions or []:
        await action.send(for_id=message.id)


def _zip(root: Path, names: list[str]) -> bytes | None:
    buffer, total = io.BytesIO(), 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            path = root / name
            if not path.is_file():
                continue
            total += path.stat().st_size
            if total > ZIP_LIMIT_BYTES:
                return None
            archive.write(path, name)
        manifest = root / "manifest.json"
        if manifest.is_file():
            archive.write(manifest, "manifest.json")
    return buffer.getvalue() if total else None


async def redraw_soon(view: RunView, delay_s: float = 0.0) -> None:
    if delay_s:
        await asyncio.sleep(delay_s)
    await view.draw()
