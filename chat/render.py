"""What the chat shows, as plain data and Markdown (no Chainlit here, so it is unit-tested alone).

Everything a model or a person wrote is untrusted: it goes through ``inert`` (Markdown and HTML
syntax escaped, so ``<script>`` or ``[x](javascript:…)`` shows as text) or into a fenced block whose
fence is longer than any backtick run inside it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hitl.attention import Attention, Waiting
from hitl.base import Escalation, EscalationKind
from teams.base import Run, RunStatus, StageRecord, StageStatus

# Every ASCII punctuation character CommonMark lets a backslash escape (HTML's < > & included).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&\"'=:$%^])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Indentation cannot be escaped; kept, it would make an indented code block, where escapes show as typed.
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)

RUN_WORDS = {
    RunStatus.RUNNING: "running",
    RunStatus.WAITING_HUMAN: "waiting on you",
    RunStatus.COMPLETE: "complete",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}
#: Node colours of the pipeline picture, by stage status.
COLOURS = {
    StageStatus.PENDING: "#9ca3af",
    StageStatus.RUNNING: "#3b82f6",
    StageStatus.COMPLETE: "#16a34a",
    StageStatus.NEEDS_CLARIFICATION: "#f59e0b",
    StageStatus.BLOCKED: "#dc2626",
    StageStatus.WAITING_HUMAN: "#f59e0b",
    StageStatus.FAILED: "#dc2626",
    StageStatus.SKIPPED: "#d1d5db",
}


def inert(text: object, limit: int | None = None) -> str:
    """``text`` as Markdown that renders literally: no markup, link, image or HTML can come of it."""
    value = str(text)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    value = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return _MARKDOWN.sub(r"\\\1", _INDENT.sub("", value))


def fenced(text: str, language: str = "text", limit: int | None = None) -> str:
    """``text`` in a code block that nothing inside can close early."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    language = language if re.fullmatch(r"[a-z0-9+-]{1,20}", language) else "text"
    return f"{fence}{language}\n{text}\n{fence}"


def code(text: object, limit: int = 300) -> str:
    """``text`` as an inline code span (shown literally; backslashes are not escapes there)."""
    value = _CONTROL.sub(" ", str(text).replace("\n", " "))[:limit]
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}" if value else ""


def bullets(items: Iterable[object], limit: int = 300) -> str:
    """A list of the non-blank items (an empty ``- `` line under a label would make it a heading)."""
    shown = (inert(item, limit) for item in items)
    return "\n".join(f"- {text}" for text in shown if text.strip())


def section(label: str, items: Iterable[object]) -> str:
    """``label`` in bold over a list of ``items``; nothing when no item has text."""
    listed = bullets(items)
    return f"\n**{label}**\n\n{listed}" if listed else ""


def duration(stage: StageRecord, now: datetime | None = None) -> float | None:
    if stage.started_at is None:
        return None
    end = stage.finished_at or (now or datetime.now(UTC))
    return max(0.0, (end - stage.started_at).total_seconds())


def money(usd: float) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"


def stage_title(stage: StageRecord) -> str:
    return f"{stage.index + 1}. {stage.team} · {stage.status.value.replace('_', ' ')}"


def stage_figures(stage: StageRecord, now: datetime | None = None) -> str:
    """The one line of numbers shown while a stage runs and after."""
    parts = [stage.status.value.replace("_", " ")]
    if stage.model:
        parts.append(f"model {inert(stage.model, 120)}")
    parts.append(f"tokens {stage.tokens_in:,} in / {stage.tokens_out:,} out")
    parts.append(f"cost {money(stage.cost_usd)}")
    took = duration(stage, now)
    if took is not None:
        parts.append(f"{took:.1f}s")
    if stage.attempts > 1:
        parts.append(f"{stage.attempts} executions")
    if stage.clarifications:
        parts.append(f"{stage.clarifications} clarification{'s' * (stage.clarifications != 1)}")
    if stage.checks:
        parts.append(checks_figures(stage.checks))
    return " · ".join(parts)


def checks_figures(checks: dict[str, Any]) -> str:
    """The verification gate's figures of a stage, or a run's, in a few words (a skipped check is
    named as such: "9/10 passed" alone reads as a failure nobody names)."""
    run, passed, failed = int(checks.get("run", 0)), int(checks.get("passed", 0)), int(checks.get("failed", 0))
    skipped = int(checks.get("skipped", 0))
    if run and skipped == run:
        text = f"{run} check{'s' * (run != 1)} skipped"
    else:
        text = f"checks {passed}/{run} passed"
    if failed:
        text += (
            f", {failed} failed ({inert(', '.join(checks.get('failing') or []), 200)})"
            if checks.get("failing")
            else f", {failed} failed"
        )
    if checks.get("errored"):
        text += f", {checks['errored']} could not run"
    if skipped and skipped != run:
        text += f", {skipped} skipped"
    tests = (int(checks.get("tests_passed", 0)), int(checks.get("tests_failed", 0)))
    if any(tests):
        text += f" · tests {tests[0]} passed, {tests[1]} failed"
    security = {k: v for k, v in (checks.get("security") or {}).items() if v}
    if security:
        text += " · security " + ", ".join(f"{v} {inert(k, 20)}" for k, v in security.items())
    return text


def stage_body(stage: StageRecord, now: datetime | None = None) -> str:
    """A stage's step: its figures, then the TaskResult summary once there is one."""
    lines = [stage_figures(stage, now)]
    result = stage.result
    if result is not None:
        lines.append(f"\n**{inert(result.status.value)}** at confidence **{result.confidence:.2f}**")
        if result.reasoning:
            lines.append(f"\n**Reasoning.** {inert(result.reasoning, 1500)}")
        if result.assumptions_made:
            lines.append(section("Assumptions", result.assumptions_made[:10]))
        if result.blockers:
            lines.append(section("Blockers", result.blockers[:10]))
        if result.artifacts:
            names = ", ".join(f"{code(a.name, 200)}" for a in result.artifacts[:20])
            lines.append(f"\n**Artifacts:** {names}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Clarification:
    """One question between teams, as the audit recorded it."""

    stage: int
    asking: str
    target: str
    question: str
    outcome: str
    answer: str | None = None
    answered_by: str | None = None

    @classmethod
    def from_audit(cls, payload: dict[str, Any]) -> Clarification:
        chain = [str(t) for t in payload.get("hop_chain") or []]
        return cls(
            stage=int(payload.get("stage", 0)),
            asking=str(payload.get("team", chain[0] if chain else "")),
            target=chain[-1] if chain else "",
            question=str(payload.get("question", "")),
            outcome=str(payload.get("outcome", "")),
            answer=payload.get("answer"),
            answered_by=payload.get("answered_by"),
        )

    @property
    def answered(self) -> bool:
        """Whether the target team answered: a reply saying it could not (outcome ``unanswered``) is no answer."""
        return self.outcome == "answered"


def clarification_title(c: Clarification) -> str:
    return f"clarification: {c.asking} asked {c.target}"


def clarification_body(c: Clarification) -> str:
    lines = [f"**Question:** {inert(c.question, 1000)}"]
    if c.answered:
        lines.append(f"**Answered by {inert(c.answered_by or c.target)}:** {inert(c.answer or '', 1500)}")
    else:
        lines.append(f"**Not answered** ({inert(c.outcome)}): it went to the operator")
        if c.answer:
            lines.append(f"**{inert(c.target)} replied:** {inert(c.answer, 1500)}")
    return "\n\n".join(lines)


def choices(e: Escalation) -> list[tuple[str, str]]:
    """The decisions an escalation takes, (action, what it does), in the order offered."""
    if e.kind in (EscalationKind.APPROVAL, EscalationKind.BUDGET):
        first = (
            [("approve", "grant one more budget of the same size; the run continues")]
            if e.kind is EscalationKind.BUDGET
            else [("approve", "accept the stage's artifacts as they stand; the run continues")]
        )
        reject = (
            "cancel the run" if e.kind is EscalationKind.BUDGET else "the stage runs again with your reason as feedback"
        )
        return [*first, ("reject", reject), ("defer", "decide later; the run keeps waiting")]
    return [
        ("answer", "the stage runs again with your answer"),
        ("reject", "the team proceeds on its own assumptions, with your reason as feedback"),
        ("defer", "decide later; the run keeps waiting"),
    ]


HEADLINES = {
    EscalationKind.CLARIFICATION: "A team asks you",
    EscalationKind.APPROVAL: "Approval needed",
    EscalationKind.BLOCKED: "A team is blocked",
    EscalationKind.BUDGET: "A budget is spent",
}


def escalation_card(e: Escalation, now: datetime | None = None) -> str:
    """Everything needed to decide: question, reasoning, blockers, excerpts, what each choice does."""
    now = now or datetime.now(UTC)
    due = (e.sla_deadline - now).total_seconds()
    when = f"due in {_span(due)}" if due >= 0 else f"**{_span(-due)} past its SLA**"
    lines = [
        f"### {HEADLINES.get(e.kind, 'A decision is needed')} · {inert(e.priority.value)} priority",
        f"{code(e.id)} · run {code(e.run_id)} · stage {e.stage_index + 1} **{inert(e.team)}** · {when}",
        f"\n**Question.** {inert(e.question, 2000)}",
    ]
    c = e.context
    found = findings_section(c)
    # A checks card's reason is its question's own words: said once, then what the checks found.
    if c.get("reason") and not (found and str(c["reason"]) in e.question):
        lines.append(f"\n**Why it stopped.** {inert(c['reason'], 800)}")
    if found:
        lines.append(found)
    if c.get("reasoning"):
        lines.append(f"\n**The team's reasoning.** {inert(c['reasoning'], 1500)}")
    for label, key in (("Blockers", "blockers"), ("Assumptions", "assumptions"), ("Route", "hop_chain")):
        if c.get(key):
            lines.append(section(label, list(c[key])[:10]))
    for name, excerpt in list((c.get("artifacts") or {}).items())[:4]:
        lines.append(f"\n**{inert(name, 200)}** (excerpt)\n{fenced(str(excerpt), limit=1200)}")
    if e.waiting:
        lines.append("\n**Choices**\n" + "\n".join(f"- **{a}**: {why}" for a, why in choices(e)))
    else:
        lines.append(f"\n**Decided:** {decision_line(e)}")
    return "\n".join(lines)


FINDINGS_SHOWN = 20


def findings_section(context: dict[str, Any]) -> str:
    """What the verification gate found, from an escalation's context (``failing_checks``,
    ``findings`` of {check, artifact, line, message}, ``owners``): one line per finding saying which
    check, which file and line, and its message; nothing when the context has none. Every part is a
    team's file or a tool's words about it, so all of it is shown inert."""
    failing = [str(name) for name in _listed(context.get("failing_checks"))]
    found = [f for f in _listed(context.get("findings")) if isinstance(f, dict)]
    if not failing and not found:
        return ""
    lines = []
    for f in found[:FINDINGS_SHOWN]:
        where = code(f.get("artifact"), 200) if f.get("artifact") else "no one file"
        if isinstance(f.get("line"), int) and not isinstance(f.get("line"), bool):
            where += f" line {f['line']}"
        message = " ".join(str(f.get("message", "")).split())  # a tool's output on one line of the list
        lines.append(f"- **{inert(f.get('check', '?'), 60)}** · {where}: {inert(message, 300)}")
    if len(found) > FINDINGS_SHOWN:
        lines.append(f"- … and {len(found) - FINDINGS_SHOWN} more")
    named = {str(f.get("check")) for f in found}
    for name in failing:
        if name not in named:  # a check that failed without a finding of its own: still named
            lines.append(f"- **{inert(name, 60)}** failed (its report is in the run's audit)")
    owners = [str(o) for o in _listed(context.get("owners"))]
    whose = f" in files of {inert(', '.join(owners), 200)}" if owners else ""
    return f"\n**What the checks found{whose}**\n\n" + "\n".join(lines)


def _listed(value: object) -> list[Any]:
    """``value`` if it is a list (an escalation's context is stored JSON: anything may be in it)."""
    return value if isinstance(value, list) else []


def failing_by_stage(stages: Iterable[StageRecord]) -> str:
    """The checks still failing in a run, stage by stage ("ruff, pytest in qa-engineering; …")."""
    return "; ".join(
        f"{', '.join(map(str, s.checks['failing']))} in {s.team}"
        for s in stages
        if s.checks and s.checks.get("failing")
    )


def decision_line(e: Escalation) -> str:
    who = f" by {inert(e.decided_by)}" if e.decided_by else ""
    text = f": {inert(e.answer, 500)}" if e.answer else ""
    return f"{inert(e.status.value)}{who}{text}"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def attention_markdown(att: Attention, low_risk: Sequence[str] = ()) -> str:
    """The decision queue: the headline, then one line per waiting escalation, most urgent first."""
    lines = [f"**{inert(att.headline())}**"]
    for item in att.items:
        lines.append(attention_line(item, risk="low risk" if item.escalation.id in low_risk else ""))
    return "\n".join(lines)


def attention_line(item: Waiting, risk: str = "") -> str:
    e = item.escalation
    due = f"due in {_span(item.due_in_s)}" if item.due_in_s >= 0 else f"{_span(-item.due_in_s)} late"
    tag = f" · {risk}" if risk else ""
    return (
        f"- {code(e.id)} **{inert(e.priority.value)}** {inert(e.kind.value)} · {inert(e.team)} · {due}{tag}"
        f" — {inert(e.question, 160)}"
    )


def run_headline(run: Run, stages: Sequence[StageRecord]) -> str:
    done = sum(s.status is StageStatus.COMPLETE for s in stages)
    tokens = sum(s.tokens_in + s.tokens_out for s in stages)
    cost = sum(s.cost_usd for s in stages)
    return (
        f"**Run {code(run.id)}** · {inert(run.pipeline_name)} · {RUN_WORDS.get(run.status, run.status.value)}"
        f" · {done}/{len(stages)} stages · {tokens:,} tokens · {money(cost)}"
    )


@dataclass
class TeamUsage:
    team: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    runs: set[str] = field(default_factory=set)


def usage_by_team(stages: Iterable[StageRecord]) -> list[TeamUsage]:
    """Tokens and cost per team over ``stages`` (of one run or many), in first-seen order."""
    rows: dict[str, TeamUsage] = {}
    for s in stages:
        row = rows.setdefault(s.team, TeamUsage(s.team))
        row.tokens_in += s.tokens_in
        row.tokens_out += s.tokens_out
        row.cost_usd += s.cost_usd
        row.runs.add(s.run_id)
    return list(rows.values())


def usage_table(rows: Sequence[TeamUsage]) -> str:
    lines = ["| team | runs | tokens in | tokens out | cost |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {inert(r.team)} | {len(r.runs)} | {r.tokens_in:,} | {r.tokens_out:,} | {money(r.cost_usd)} |")
    runs: set[str] = set().union(*(r.runs for r in rows)) if rows else set()
    total = TeamUsage("total", sum(r.tokens_in for r in rows), sum(r.tokens_out for r in rows),
                      sum(r.cost_usd for r in rows), runs)  # fmt: skip
    lines.append(
        f"| **total** | {len(total.runs)} | {total.tokens_in:,} | {total.tokens_out:,} | {money(total.cost_usd)} |"
    )
    return "\n".join(lines)


def usage_figure(rows: Sequence[TeamUsage], title: str) -> Any:
    """A Plotly bar chart: tokens in and out per team (left axis), cost as markers (right axis)."""
    from plotly import graph_objects as go

    teams = [r.team for r in rows]
    fig = go.Figure()
    fig.add_bar(name="tokens in", x=teams, y=[r.tokens_in for r in rows], marker_color="#3b82f6")
    fig.add_bar(name="tokens out", x=teams, y=[r.tokens_out for r in rows], marker_color="#93c5fd")
    fig.add_scatter(name="cost (USD)", x=teams, y=[r.cost_usd for r in rows], yaxis="y2", mode="markers",
                    marker={"color": "#dc2626", "size": 10})  # fmt: skip
    fig.update_layout(
        title=title,
        barmode="stack",
        yaxis={"title": "tokens"},
        yaxis2={"title": "USD", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        legend={"orientation": "h"},
        margin={"l": 50, "r": 50, "t": 50, "b": 110},
        xaxis={"tickangle": -35},
    )
    return fig


def pipeline_figure(stages: Sequence[StageRecord], clarifications: Sequence[Clarification]) -> Any:
    """The run as a picture: team nodes coloured by outcome on the main flow (solid arrows), and
    clarifications as dashed orange arcs from the asking team to the team asked."""
    from plotly import graph_objects as go

    where = {s.team: s.index for s in stages}
    fig = go.Figure()
    fig.add_scatter(x=[s.index for s in stages], y=[0] * len(stages), mode="lines",
                    line={"color": "#6b7280", "width": 2}, hoverinfo="skip", name="main flow")  # fmt: skip
    for c in clarifications:
        if c.asking not in where or c.target not in where:
            continue
        a, b = where[c.asking], where[c.target]
        height = 0.35 + 0.08 * abs(a - b)
        xs = [a + (b - a) * t / 20 for t in range(21)]
        ys = [height * 4 * (t / 20) * (1 - t / 20) for t in range(21)]
        answered = c.answered
        fig.add_scatter(x=xs, y=ys, mode="lines", name="clarification",
                        line={"color": "#f59e0b" if answered else "#dc2626", "dash": "dash", "width": 2},
                        # Plotly reads <b>, <a href>, <span style> and entities in hover text: escaped.
                        hovertext=html.escape(f"{c.asking} asked {c.target}: {c.question[:120]}", quote=False),
                        hoverinfo="text",
                        showlegend=False)  # fmt: skip
    fig.add_scatter(
        x=[s.index for s in stages],
        y=[0] * len(stages),
        mode="markers+text",
        marker={"size": 26, "color": [COLOURS.get(s.status, "#9ca3af") for s in stages],
                "line": {"color": "#111827", "width": 1}},
        text=[str(s.index + 1) for s in stages],
        textfont={"color": "white"},
        hovertext=[f"{s.team}: {s.status.value}" for s in stages],
        hoverinfo="text",
        name="teams",
    )  # fmt: skip
    fig.update_layout(
        title="Pipeline: teams by outcome; dashed arcs are clarifications",
        showlegend=False,
        xaxis={"tickmode": "array", "tickvals": [s.index for s in stages], "ticktext": [s.team for s in stages],
               "tickangle": -40, "showgrid": False, "zeroline": False},
        yaxis={"visible": False, "range": [-0.3, 1.4]},
        margin={"l": 20, "r": 20, "t": 50, "b": 130},
        height=360,
    )  # fmt: skip
    return fig
