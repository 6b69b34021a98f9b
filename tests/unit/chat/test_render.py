"""What the chat shows (``chat.render``), checked by rendering it as a browser would be given it.

Chainlit renders messages with react-markdown, raw HTML off. Here a CommonMark renderer
(markdown-it-py, locked through ``rich``) stands in for it, with raw HTML switched *on* as well, so
that escaping alone is shown to make model- and operator-written text inert: no tag but paragraphs
and line breaks comes of it, and the text a reader sees is the text that was written.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from plotly import io as plotly_io

from chat.render import (
    COLOURS,
    HEADLINES,
    Clarification,
    TeamUsage,
    attention_markdown,
    bullets,
    choices,
    clarification_body,
    clarification_title,
    code,
    escalation_card,
    fenced,
    inert,
    money,
    pipeline_figure,
    run_headline,
    stage_body,
    stage_figures,
    stage_title,
    usage_by_team,
    usage_figure,
    usage_table,
)
from hitl.attention import attention
from hitl.base import Escalation, EscalationKind, EscalationStatus, Priority
from hitl.sla import SlaPolicy
from teams.base import Run, RunStatus, StageRecord, StageStatus
from teams.results import Artifact, TaskResult, TaskStatus

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

#: Raw HTML off (as Chainlit has it) and on (escaping alone must be enough).
RENDERERS = {
    "html-off": MarkdownIt("commonmark", {"html": False}),
    "html-on": MarkdownIt("commonmark", {"html": True}),
}
#: GFM's tables and strikethrough, which Chainlit's remark-gfm adds.
GFM = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "![x](http://evil/x.png)",
    "<javascript:alert(1)>",
    "<http://evil.example/>",
    "**bold** _em_ __strong__ ~~gone~~ `tick`",
    "&lt;script&gt; &amp; &#60;img&#62; &#x3C;",
    "back\\slash \\* \\<b\\> trailing\\",
    "# heading\n> quote\n- item\n1. item\n2) item\n---\n===\n```\nfence\n~~~",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "[ref]: javascript:alert(1)\n[ref]",
    ":::note\n:name[label]{onclick=x}\n:::",
    "> [!WARNING]\n> $x^2$ $$y$$",
    "    indented code\n\n\tafter a blank line",
    "ctrl \x00\x01\x07\x08\x0b\x0c\x0d\x1b\x1f\x7f end",
    # HTML blocks start on an incomplete tag at the start of a line.
    "<div onmouseover=alert(1)\nx",
    "<script\nalert(1)",
    "<style\n* { display: none }",
    "<!-- comment -->\n<?php x ?>\n<![CDATA[x]]>\n<!DOCTYPE html>",
]

_TAG = re.compile(r"<[^>]*>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def tags(rendered: str) -> set[str]:
    """Every tag in rendered HTML (text ``<`` is always escaped there, so each ``<`` opens a tag)."""
    return set(_TAG.findall(rendered))


def visible(rendered: str) -> str:
    """The text a browser shows for rendered HTML: tags dropped, entities decoded."""
    return html.unescape(_TAG.sub("", rendered))


def squash(text: str) -> str:
    """Whitespace as HTML shows it: runs collapsed to one space, none at either end."""
    return " ".join(text.split())


def shown(text: str) -> str:
    """What ``inert`` promises a reader sees: the text, with C0 controls spelled ``\\x..``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def stage(index: int = 0, team: Any = "backend-engineering", **fields: Any) -> StageRecord:
    return StageRecord(run_id=fields.pop("run_id", "run-1"), index=index, team=team, **fields)


def escalation(kind: EscalationKind, **fields: Any) -> Escalation:
    values: dict[str, Any] = {
        "id": f"esc-{kind.value}",
        "run_id": "run-1",
        "stage_index": 2,
        "team": "backend-engineering",
        "kind": kind,
        "priority": Priority.HIGH,
        "question": "Which database?",
        "sla_deadline": NOW + timedelta(hours=2),
        "created_at": NOW - timedelta(hours=1),
    }
    return Escalation(**(values | fields))


# --- inert ------------------------------------------------------------------------------------


@pytest.mark.parametrize("renderer", RENDERERS.values(), ids=RENDERERS.keys())
@pytest.mark.parametrize("text", HOSTILE)
def test_inert_renders_hostile_text_as_plain_paragraphs(renderer: MarkdownIt, text: str) -> None:
    rendered = renderer.render(inert(text))
    assert tags(rendered) <= {"<p>", "</p>", "<br />"}, rendered
    assert squash(visible(rendered)) == squash(shown(text))


@pytest.mark.parametrize("text", HOSTILE)
def test_inert_is_inert_under_gfm_tables_and_strikethrough(text: str) -> None:
    rendered = GFM.render(inert(text))
    assert tags(rendered) <= {"<p>", "</p>", "<br />"}, rendered
    assert squash(visible(rendered)) == squash(shown(text))


def test_inert_escapes_what_would_otherwise_be_live() -> None:
    md = RENDERERS["html-on"]
    # The same inputs unescaped are live: the check above is not vacuous.
    assert "<script>" in md.render("<script>alert(1)</script>")
    assert "<img" in md.render("![x](http://evil/x.png)")
    assert "<a " in md.render("[x](http://evil/)")
    assert "<div onmouseover" in md.render("<div onmouseover=alert(1)\nx")
    for text in HOSTILE:
        out = md.render(inert(text))
        for tag in ("<script", "<img", "<a ", "<strong", "<em", "<code", "<pre", "<h1", "<ul", "<ol", "<blockquote"):
            assert tag not in out, (text, out)


def test_inert_escapes_what_only_chainlits_plugins_read() -> None:
    # Chainlit adds remark-directive (``:name[x]{a=b}``, ``:::box``), remark-math when LaTeX is on
    # (``$x$``) and GFM footnotes and alerts (``[^1]``, ``[!NOTE]``): CommonMark cannot show these.
    for ch in ":${}^![]~|<>":
        assert inert(ch) == "\\" + ch, ch


def test_inert_shows_entities_and_backslashes_literally() -> None:
    md = RENDERERS["html-on"]
    assert visible(md.render(inert("&lt;script&gt;"))).strip() == "&lt;script&gt;"
    assert visible(md.render(inert("a\\b\\\\c\\"))).strip() == "a\\b\\\\c\\"
    assert visible(md.render(inert("line\\\nnext"))).split() == ["line\\", "next"]  # no hard break


def test_inert_spells_control_characters() -> None:
    assert inert("a\x00b\x1bc\x7f") == "a\\\\x00b\\\\x1bc\\\\x7f"
    assert visible(RENDERERS["html-off"].render(inert("a\x00b\rc"))).strip() == "a\\x00b\\x0dc"
    assert inert("tab\tand\nnewline") == "tab\tand\nnewline"  # layout whitespace is kept


def test_inert_truncates_at_limit_with_an_ellipsis() -> None:
    assert inert("abcdefghij", limit=5) == "abcd…"
    assert inert("abcde", limit=5) == "abcde"
    assert inert("*" * 50, limit=10) == "\\*" * 9 + "…"  # counted before escaping, escapes never split
    assert visible(RENDERERS["html-on"].render(inert("x" * 5000, limit=1500))).strip() == "x" * 1499 + "…"


def test_inert_indented_text_is_not_a_code_block() -> None:
    # Inside a code block escapes are not undone: the reader would see ``\(`` for ``(``.
    text = "intro\n\n    f(x) = *y*\n\tg[0]"
    rendered = RENDERERS["html-off"].render(inert(text))
    assert tags(rendered) <= {"<p>", "</p>", "<br />"}, rendered
    assert squash(visible(rendered)) == squash(text)


def test_inert_accepts_any_object() -> None:
    assert inert(3) == "3"
    assert inert(None) == "None"
    assert inert(StageStatus.WAITING_HUMAN) == "waiting\\_human"


markdownish = st.text(
    alphabet=st.sampled_from(list("\\`*_{}[]()#+-.!|<>~&\"'=:$%^/;?@,0123456789ax \t\n\r\x00\x01\x0b\x0c\xa0\u2028")),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=200), markdownish))
def test_inert_property_only_paragraphs_and_the_same_text(text: str) -> None:
    for renderer in RENDERERS.values():
        rendered = renderer.render(inert(text))
        assert tags(rendered) <= {"<p>", "</p>", "<br />"}, rendered
        assert squash(visible(rendered)) == squash(shown(text))


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=120), markdownish))
def test_inert_property_in_the_middle_of_markup(text: str) -> None:
    # As stage_body and escalation_card use it: after a bold label, and as a list item.
    md = RENDERERS["html-on"]
    rendered = md.render(f"**Reasoning.** {inert(text)}")
    assert tags(rendered) <= {"<p>", "</p>", "<br />", "<strong>", "</strong>"}, rendered
    assert rendered.count("<strong>") == 1
    assert squash(visible(rendered)) == squash("Reasoning. " + shown(text))
    rendered = md.render(bullets([text, "second"]))
    assert tags(rendered) <= {"<p>", "</p>", "<br />", "<ul>", "</ul>", "<li>", "</li>"}, rendered
    assert squash(visible(rendered)) == squash(shown(text) + " second")


# --- fenced -----------------------------------------------------------------------------------


def code_blocks(markdown: str) -> list[Any]:
    return [t for t in RENDERERS["html-on"].parse(markdown) if t.type in ("fence", "code_block")]


@pytest.mark.parametrize(
    "text",
    ["plain", "a\n```\nb", "````\nx\n````", "```python\nprint(1)\n```\n\nafter", "~~~\nx\n~~~", "``` ```` `````", ""],
)
def test_fenced_content_cannot_close_the_fence(text: str) -> None:
    markdown = fenced(text)
    blocks = code_blocks(markdown)
    assert len(blocks) == 1, markdown
    assert blocks[0].content == text + "\n"
    rendered = RENDERERS["html-on"].render(markdown)
    assert rendered.count("<pre>") == 1 and rendered.endswith("</code></pre>\n")


def test_fenced_hostile_content_stays_in_the_block() -> None:
    text = "```\n<script>alert(1)</script>\n```\n![x](http://evil/x.png)"
    rendered = RENDERERS["html-on"].render(fenced(text, "html") + "\n\nafter")
    assert "<script" not in rendered and "<img" not in rendered
    assert rendered.count("<pre>") == 1
    assert rendered.endswith("<p>after</p>\n")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.text(alphabet="`~ \na", max_size=60))
def test_fenced_property_one_block_holding_the_whole_text(text: str) -> None:
    blocks = code_blocks(fenced(text))
    assert len(blocks) == 1
    # CommonMark normalises line endings and replaces NUL: nothing else is changed in a code block.
    assert blocks[0].content == (text + "\n").replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")


@pytest.mark.parametrize(
    ("language", "info"),
    [
        ("python", "python"),
        ("c++", "c++"),
        ("objective-c", "objective-c"),
        ("x" * 20, "x" * 20),
        ("x" * 21, "text"),
        ("Python", "text"),
        ("js onload=x", "text"),
        ("py`", "text"),
        ("a\nb", "text"),
        ("", "text"),
        ("{.class}", "text"),
    ],
)
def test_fenced_language_outside_the_safe_set_falls_back_to_text(language: str, info: str) -> None:
    markdown = fenced("x", language)
    assert markdown.splitlines()[0] == f"```{info}"
    assert code_blocks(markdown)[0].info == info


def test_fenced_truncates_at_limit() -> None:
    (block,) = code_blocks(fenced("y" * 3000, limit=1200))
    assert block.content == "y" * 1199 + "…\n"


# --- code -------------------------------------------------------------------------------------


def inline_codes(markdown: str) -> list[str]:
    tokens = RENDERERS["html-on"].parse(markdown)
    return [c.content for t in tokens if t.type == "inline" for c in t.children or [] if c.type == "code_inline"]


def commonmark_span(content: str) -> str:
    """What CommonMark shows of a code span's content: one space stripped from each end when both are
    spaces and the content is not only spaces."""
    if len(content) >= 2 and content[0] == content[-1] == " " and content.strip(" "):
        return content[1:-1]
    return content


@pytest.mark.parametrize(
    "text", ["esc-1", "a`b", "``x``", "`", "```", "a\nb", "<b>x</b>", "*x*", "\\", "x`", "`x", "tab\there", "a\x00b"]
)
def test_code_is_one_span_showing_the_text(text: str) -> None:
    markdown = code(text)
    expected = _CONTROL.sub(" ", text.replace("\n", " "))
    assert inline_codes(markdown) == [expected]
    rendered = RENDERERS["html-on"].render(f"run {markdown} done")
    assert rendered.count("<code>") == 1 and "<b>" not in rendered and "<em>" not in rendered


def test_code_of_nothing_is_nothing_and_long_text_is_cut() -> None:
    assert code("") == ""
    assert inline_codes(code("z" * 500)) == ["z" * 300]
    assert inline_codes(code("z" * 500, limit=20)) == ["z" * 20]


@settings(max_examples=300, deadline=None)
@given(text=st.text(min_size=1, max_size=120) | st.text(alphabet="` a\n", min_size=1, max_size=40))
def test_code_property_one_span(text: str) -> None:
    value = _CONTROL.sub(" ", text.replace("\n", " "))
    # In a list item as attention_line puts it, and after text.
    for markdown in (f"- {code(text)} **high**", f"id {code(text)}, next"):
        assert inline_codes(markdown) == [commonmark_span(value)], markdown


# --- stages -----------------------------------------------------------------------------------


def test_stage_title() -> None:
    assert stage_title(stage(index=2, status=StageStatus.NEEDS_CLARIFICATION)) == (
        "3. backend-engineering · needs clarification"
    )
    assert stage_title(stage(index=0, team="documentation")) == "1. documentation · pending"


def test_stage_figures_of_a_finished_stage() -> None:
    s = stage(
        status=StageStatus.COMPLETE,
        model="factory/coder -> ollama/qwen2.5-coder",
        tokens_in=12345,
        tokens_out=678,
        cost_usd=0.01234,
        started_at=NOW - timedelta(seconds=75),
        finished_at=NOW - timedelta(seconds=10),
        attempts=3,
        clarifications=2,
    )
    figures = stage_figures(s, now=NOW)
    assert visible(RENDERERS["html-off"].render(figures)).strip() == (
        "complete · model factory/coder -> ollama/qwen2.5-coder · tokens 12,345 in / 678 out · cost $0.0123"
        " · 65.0s · 3 executions · 2 clarifications"
    )


def test_stage_figures_while_running_and_before() -> None:
    running = stage(status=StageStatus.RUNNING, started_at=NOW - timedelta(seconds=90), attempts=1, clarifications=1)
    assert stage_figures(running, now=NOW) == ("running · tokens 0 in / 0 out · cost $0.0000 · 90.0s · 1 clarification")
    assert stage_figures(stage(cost_usd=2.5), now=NOW) == "pending · tokens 0 in / 0 out · cost $2.50"


def test_stage_figures_model_name_is_inert() -> None:
    figures = stage_figures(stage(model="<img src=x onerror=alert(1)> [x](javascript:1)"), now=NOW)
    rendered = RENDERERS["html-on"].render(figures)
    assert tags(rendered) == {"<p>", "</p>"}
    assert "model <img src=x onerror=alert(1)> [x](javascript:1)" in visible(rendered)


def test_stage_body_without_a_result_is_its_figures() -> None:
    s = stage(status=StageStatus.RUNNING, started_at=NOW - timedelta(seconds=5))
    assert stage_body(s, now=NOW) == stage_figures(s, now=NOW)


def hostile_result() -> TaskResult:
    return TaskResult(
        status=TaskStatus.BLOCKED,
        reasoning="<script>alert(1)</script> see [docs](javascript:alert(1))",
        blockers=["![x](http://evil/x.png)", "**no db**"],
        assumptions_made=["<img src=x onerror=alert(1)>", "# not a heading"],
        artifacts=[
            Artifact(name="docs/__init__.md", kind="markdown", content="# x"),
            # A name that never validated (a row written before the rules): still shown literally.
            Artifact.model_construct(name="<img src=x onerror=alert(1)>`", kind="text", content=""),
        ],
        confidence=0.42,
    )


def test_stage_body_with_a_hostile_result_renders_inert() -> None:
    s = stage(status=StageStatus.BLOCKED, result=hostile_result(), tokens_in=10, tokens_out=5)
    body = stage_body(s, now=NOW)
    for renderer in RENDERERS.values():
        rendered = renderer.render(body)
        assert not {t for t in tags(rendered) if re.match(r"</?(script|img|a|h\d|em)\b", t)}, rendered
        text = visible(rendered)
        assert "BLOCKED at confidence 0.42" in text
        assert "Reasoning. <script>alert(1)</script> see [docs](javascript:alert(1))" in text
        assert "![x](http://evil/x.png)" in text and "**no db**" in text
        assert "<img src=x onerror=alert(1)>" in text and "# not a heading" in text
    tokens = RENDERERS["html-on"].parse(body)
    items = [t.content for t in tokens if t.type == "inline" and t.level == 3]  # list items' paragraphs
    assert items == [
        inert("<img src=x onerror=alert(1)>"),
        inert("# not a heading"),
        inert("![x](http://evil/x.png)"),
        inert("**no db**"),
    ]
    assert inline_codes(body) == ["docs/__init__.md", "<img src=x onerror=alert(1)>`"]


def test_stage_body_lists_are_bounded() -> None:
    many = TaskResult(
        status=TaskStatus.COMPLETE,
        reasoning="r" * 5000,
        assumptions_made=[f"a{i}" for i in range(15)],
        confidence=0.9,
    )
    body = stage_body(stage(result=many), now=NOW)
    assert "r" * 1499 + "…" in body and "r" * 1500 not in body
    assert "- a9" in body and "- a10" not in body


# --- escalations ------------------------------------------------------------------------------

CONTEXT: dict[str, Any] = {
    "reason": "confidence 0.40 below the floor <0.6>",
    "reasoning": "I guessed **everything** <script>x</script>",
    "blockers": ["no schema [link](javascript:1)"],
    "assumptions": ["postgres is fine"],
    "hop_chain": ["backend-engineering", "database-engineering"],
    "artifacts": {
        "<img src=x onerror=alert(1)>": "```\n<script>alert(2)</script>\n```\nrest",
        "docs/api.md": "# API\n" + "z" * 2000,
    },
}


def choice_lines(card: str) -> list[tuple[str, str]]:
    return re.findall(r"^- \*\*(\w+)\*\*: (.*)$", card, re.M)


@pytest.mark.parametrize("kind", list(EscalationKind))
def test_escalation_card_shows_everything_needed_to_decide(kind: EscalationKind) -> None:
    e = escalation(kind, question="Use <b>MySQL</b> or [PG](javascript:1)?", context=CONTEXT)
    card = escalation_card(e, now=NOW)
    rendered = RENDERERS["html-on"].render(card)
    text = visible(rendered)
    assert not {t for t in tags(rendered) if re.match(r"</?(script|img|a|b|em)\b", t)}, rendered
    assert f"<h3>{HEADLINES[kind]} · high priority</h3>" in rendered
    assert "esc-" + kind.value in inline_codes(card) and "run-1" in inline_codes(card)
    assert "stage 3 backend-engineering · due in 2.0 h" in text
    assert "Question. Use <b>MySQL</b> or [PG](javascript:1)?" in text
    assert "Why it stopped. confidence 0.40 below the floor <0.6>" in text
    assert "The team's reasoning. I guessed **everything** <script>x</script>" in text
    for label, items in (
        ("Blockers", ["no schema [link](javascript:1)"]),
        ("Assumptions", ["postgres is fine"]),
        ("Route", ["backend-engineering", "database-engineering"]),
    ):
        assert f"\n**{label}**\n\n{bullets(items)}\n" in card
    assert "<li>no schema [link](javascript:1)</li>" in html.unescape(rendered)
    blocks = code_blocks(card)
    assert [b.content for b in blocks] == [
        "```\n<script>alert(2)</script>\n```\nrest\n",
        "# API\n" + "z" * 1193 + "…\n",
    ]
    assert "<img src=x onerror=alert(1)> (excerpt)" in text
    offered = choice_lines(card)
    assert offered == choices(e)
    actions = [a for a, _ in offered]
    approvable = kind in (EscalationKind.APPROVAL, EscalationKind.BUDGET)
    assert actions == (["approve", "reject", "defer"] if approvable else ["answer", "reject", "defer"])
    assert "Decided" not in text


def test_choices_say_what_each_does() -> None:
    budget = dict(choices(escalation(EscalationKind.BUDGET)))
    approval = dict(choices(escalation(EscalationKind.APPROVAL)))
    blocked = dict(choices(escalation(EscalationKind.BLOCKED)))
    assert "budget" in budget["approve"] and budget["reject"] == "cancel the run"
    assert "artifacts" in approval["approve"] and "runs again" in approval["reject"]
    assert "answer" in blocked["answer"] and "approve" not in blocked
    assert budget["defer"] == approval["defer"] == blocked["defer"]


def test_escalation_card_without_context_has_only_question_and_choices() -> None:
    card = escalation_card(escalation(EscalationKind.CLARIFICATION), now=NOW)
    text = visible(RENDERERS["html-on"].render(card))
    for absent in ("Why it stopped", "reasoning", "Blockers", "Assumptions", "Route", "excerpt"):
        assert absent not in text
    assert code_blocks(card) == []
    assert [a for a, _ in choice_lines(card)] == ["answer", "reject", "defer"]


@pytest.mark.parametrize(
    ("deadline", "wording"),
    [
        (NOW - timedelta(minutes=30), "30 min past its SLA"),
        (NOW - timedelta(seconds=20), "20s past its SLA"),
        (NOW - timedelta(hours=3), "3.0 h past its SLA"),
        (NOW + timedelta(seconds=45), "due in 45s"),
        (NOW, "due in 0s"),
    ],
)
def test_escalation_card_says_when_it_is_due(deadline: datetime, wording: str) -> None:
    card = escalation_card(escalation(EscalationKind.APPROVAL, sla_deadline=deadline), now=NOW)
    rendered = RENDERERS["html-on"].render(card)
    assert wording in visible(rendered)
    assert (f"<strong>{wording}</strong>" in rendered) == ("past" in wording)  # overdue stands out


def test_deferred_escalation_still_offers_choices() -> None:
    card = escalation_card(escalation(EscalationKind.BUDGET, status=EscalationStatus.DEFERRED), now=NOW)
    assert [a for a, _ in choice_lines(card)] == ["approve", "reject", "defer"]


@pytest.mark.parametrize(
    ("status", "answer", "by", "line"),
    [
        (
            EscalationStatus.ANSWERED,
            "use <b>postgres</b> **now**",
            "ann",
            "Decided: answered by ann: use <b>postgres</b> **now**",
        ),
        (EscalationStatus.APPROVED, None, "bob_ops", "Decided: approved by bob_ops"),
        (EscalationStatus.REJECTED, "[no](javascript:1)", None, "Decided: rejected: [no](javascript:1)"),
        (EscalationStatus.EXPIRED, None, None, "Decided: expired"),
    ],
)
def test_decided_escalation_shows_the_decision_and_no_choices(
    status: EscalationStatus, answer: str | None, by: str | None, line: str
) -> None:
    e = escalation(EscalationKind.CLARIFICATION, status=status, answer=answer, decided_by=by, decided_at=NOW)
    card = escalation_card(e, now=NOW)
    rendered = RENDERERS["html-on"].render(card)
    assert line in visible(rendered).splitlines()
    assert choice_lines(card) == [] and "Choices" not in card
    assert "<b>" not in rendered and "<a " not in rendered


# --- attention --------------------------------------------------------------------------------


def test_attention_markdown_most_urgent_first() -> None:
    waiting = [
        escalation(
            EscalationKind.APPROVAL,
            id="esc-low",
            priority=Priority.LOW,
            sla_deadline=NOW + timedelta(hours=70),
            question="Approve the *docs*?",
        ),
        escalation(
            EscalationKind.BUDGET, id="esc-medium", priority=Priority.MEDIUM, sla_deadline=NOW + timedelta(minutes=30)
        ),
        escalation(
            EscalationKind.BLOCKED,
            id="esc-high",
            priority=Priority.HIGH,
            run_id="run-2",
            sla_deadline=NOW - timedelta(hours=2),
            question="<img src=x onerror=alert(1)> " + "q" * 300,
        ),
        escalation(
            EscalationKind.CLARIFICATION,
            id="esc-critical",
            priority=Priority.CRITICAL,
            sla_deadline=NOW + timedelta(seconds=40),
        ),
    ]
    att = attention(waiting, SlaPolicy(), NOW)
    markdown = attention_markdown(att, low_risk=["esc-low"])
    lines = markdown.splitlines()
    assert lines[0] == f"**{inert(att.headline())}**"
    rendered = RENDERERS["html-on"].render(markdown)
    assert visible(rendered).splitlines()[0] == att.headline()
    assert (
        inline_codes(markdown)
        == [i.escalation.id for i in att.items]
        == ["esc-critical", "esc-high", "esc-medium", "esc-low"]
    )
    text = visible(rendered)
    assert "esc-critical critical clarification · backend-engineering · due in 40s — Which database?" in text
    assert "esc-high high blocked · backend-engineering · 2.0 h late — <img src=x onerror=alert(1)> " in text
    assert f"— {waiting[2].question[:159]}…\n" in text  # cut at 160 characters
    assert "esc-medium medium budget · backend-engineering · due in 30 min — Which database?" in text
    assert "esc-low low approval · backend-engineering · due in 70.0 h · low risk — Approve the *docs*?" in text
    assert text.count("low risk") == 1
    assert "<img" not in rendered and "<em>" not in rendered


def test_attention_markdown_when_nothing_waits() -> None:
    assert attention_markdown(attention([], SlaPolicy(), NOW)) == "**nothing needs you**"


# --- runs and usage ---------------------------------------------------------------------------


def test_run_headline() -> None:
    run = Run(
        id="run-7",
        requirement="x",
        pipeline=["business-analysis", "documentation"],
        pipeline_name="custom_<b>",
        status=RunStatus.WAITING_HUMAN,
        created_at=NOW,
        updated_at=NOW,
    )
    stages = [
        stage(0, "business-analysis", status=StageStatus.COMPLETE, tokens_in=1000, tokens_out=500, cost_usd=0.5),
        stage(1, "documentation", status=StageStatus.WAITING_HUMAN, tokens_in=10, tokens_out=5, cost_usd=0.75),
    ]
    text = visible(RENDERERS["html-on"].render(run_headline(run, stages))).strip()
    assert text == "Run run-7 · custom_<b> · waiting on you · 1/2 stages · 1,515 tokens · $1.25"


def usage_stages() -> list[StageRecord]:
    return [
        stage(0, "business-analysis", run_id="r1", tokens_in=1000, tokens_out=200, cost_usd=0.25),
        stage(1, "backend-engineering", run_id="r1", tokens_in=5000, tokens_out=3000, cost_usd=0.5),
        stage(0, "business-analysis", run_id="r2", tokens_in=1500, tokens_out=100, cost_usd=0.5),
        stage(1, "backend-engineering", run_id="r2", tokens_in=0, tokens_out=0, cost_usd=0.0),
        stage(0, "documentation", run_id="r3", tokens_in=7, tokens_out=3, cost_usd=0.001),
    ]


def test_usage_by_team_sums_per_team_in_first_seen_order() -> None:
    rows = usage_by_team(usage_stages())
    assert [(r.team, r.tokens_in, r.tokens_out, r.runs) for r in rows] == [
        ("business-analysis", 2500, 300, {"r1", "r2"}),
        ("backend-engineering", 5000, 3000, {"r1", "r2"}),
        ("documentation", 7, 3, {"r3"}),
    ]
    assert [r.cost_usd for r in rows] == pytest.approx([0.75, 0.5, 0.001])
    assert usage_by_team([]) == []


def table_rows(markdown: str) -> list[list[str]]:
    rendered = GFM.render(markdown)
    rows = re.findall(r"<tr>(.*?)</tr>", rendered, re.S)
    return [[visible(c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)] for row in rows]


def test_usage_table_rows_and_totals() -> None:
    rows = table_rows(usage_table(usage_by_team(usage_stages())))
    assert rows == [
        ["team", "runs", "tokens in", "tokens out", "cost"],
        ["business-analysis", "2", "2,500", "300", "$0.7500"],
        ["backend-engineering", "2", "5,000", "3,000", "$0.5000"],
        ["documentation", "1", "7", "3", "$0.0010"],
        ["total", "3", "7,507", "3,303", "$1.25"],  # runs counted once however many teams they had
    ]


def test_usage_table_of_nothing_and_a_hostile_team() -> None:
    assert table_rows(usage_table([]))[-1] == ["total", "0", "0", "0", "$0.0000"]
    hostile = TeamUsage("a|b <img src=x onerror=1>", tokens_in=1, runs={"r"})
    rendered = GFM.render(usage_table([hostile]))
    assert "<img" not in rendered
    assert table_rows(usage_table([hostile]))[1] == ["a|b <img src=x onerror=1>", "1", "1", "0", "$0.0000"]


def test_money() -> None:
    assert [money(0), money(0.00004), money(0.9999), money(1), money(1234.567)] == [
        "$0.0000",
        "$0.0000",
        "$0.9999",
        "$1.00",
        "$1234.57",
    ]


def test_usage_figure() -> None:
    rows = usage_by_team(usage_stages())
    fig = usage_figure(rows, "Usage, last 3 runs")
    bars_in, bars_out, cost = fig.data
    teams = ("business-analysis", "backend-engineering", "documentation")
    assert (bars_in.type, bars_in.name, bars_in.x, bars_in.y) == ("bar", "tokens in", teams, (2500, 5000, 7))
    assert (bars_out.type, bars_out.name, bars_out.y) == ("bar", "tokens out", (300, 3000, 3))
    assert (cost.type, cost.yaxis, cost.x) == ("scatter", "y2", teams)
    assert cost.y == pytest.approx((0.75, 0.5, 0.001))
    assert fig.layout.title.text == "Usage, last 3 runs" and fig.layout.barmode == "stack"
    assert fig.layout.yaxis2.overlaying == "y"
    assert json.loads(plotly_io.to_json(fig))["data"][0]["x"] == list(teams)


# --- clarifications and the pipeline picture -------------------------------------------------


def audit_payload(**fields: Any) -> dict[str, Any]:
    """A clarification audit entry as ``teams.asking.ask_team`` writes it."""
    payload: dict[str, Any] = {
        "stage": 1,
        "team": "solution-architecture",
        "request_id": "run-1:1:1:q1",
        "question": "Which <b>auth</b>?",
        "hop_chain": ["solution-architecture", "business-analysis"],
        "outcome": "answered",
        "detail": "",
        "answer": "OAuth2 [spec](javascript:1)",
        "answered_by": "responder-business-analysis-1",
    }
    stored: dict[str, Any] = json.loads(json.dumps(payload | fields))  # the audit stores JSON
    return stored


def test_clarification_from_audit() -> None:
    c = Clarification.from_audit(audit_payload())
    assert c == Clarification(
        stage=1,
        asking="solution-architecture",
        target="business-analysis",
        question="Which <b>auth</b>?",
        outcome="answered",
        answer="OAuth2 [spec](javascript:1)",
        answered_by="responder-business-analysis-1",
    )
    assert clarification_title(c) == "clarification: solution-architecture asked business-analysis"
    rendered = RENDERERS["html-on"].render(clarification_body(c))
    assert "<b>" not in rendered and "<a " not in rendered
    text = visible(rendered)
    assert "Question: Which <b>auth</b>?" in text
    assert "Answered by responder-business-analysis-1: OAuth2 [spec](javascript:1)" in text


def test_clarification_from_audit_refused_and_sparse() -> None:
    refused = Clarification.from_audit(
        audit_payload(
            outcome="cycle",
            detail="a cycle",
            answer=None,
            answered_by=None,
            hop_chain=["qa-engineering", "solution-architecture"],
            team="qa-engineering",
            stage=3,
        )
    )
    assert (refused.stage, refused.asking, refused.target, refused.answer) == (
        3,
        "qa-engineering",
        "solution-architecture",
        None,
    )
    assert not refused.answered
    text = visible(RENDERERS["html-on"].render(clarification_body(refused)))
    assert "Not answered (cycle): it went to the operator" in text
    # An entry without a team falls back to the first of the route; without anything, empty.
    assert Clarification.from_audit({"hop_chain": ["api-design", "documentation"]}).asking == "api-design"
    assert Clarification.from_audit({}) == Clarification(stage=0, asking="", target="", question="", outcome="")


def test_clarification_the_target_could_not_answer_is_not_answered() -> None:
    # ask_team records the reply of a team that could not answer (ok=False) with outcome
    # "unanswered": its text explains, it is not an answer, and the question went to the operator.
    c = Clarification.from_audit(audit_payload(outcome="unanswered", answer="business-analysis could not answer: x"))
    assert not c.answered
    text = visible(RENDERERS["html-on"].render(clarification_body(c)))
    assert "Not answered (unanswered): it went to the operator" in text
    assert "Answered by" not in text
    assert "business-analysis could not answer: x" in text
    assert Clarification.from_audit(audit_payload()).answered


def pipeline_stages() -> list[StageRecord]:
    statuses = [
        StageStatus.COMPLETE,
        StageStatus.COMPLETE,
        StageStatus.BLOCKED,
        StageStatus.RUNNING,
        StageStatus.PENDING,
    ]
    teams = ["business-analysis", "solution-architecture", "backend-engineering", "qa-engineering", "documentation"]
    return [stage(i, t, status=s) for i, (t, s) in enumerate(zip(teams, statuses, strict=True))]


def test_pipeline_figure_nodes_coloured_by_status() -> None:
    stages = pipeline_stages()
    fig = pipeline_figure(stages, [])
    flow, nodes = fig.data
    assert flow.mode == "lines" and flow.x == (0, 1, 2, 3, 4)
    assert nodes.mode == "markers+text"
    assert list(nodes.marker.color) == [COLOURS[s.status] for s in stages]
    assert list(nodes.marker.color) == ["#16a34a", "#16a34a", "#dc2626", "#3b82f6", "#9ca3af"]
    assert nodes.text == ("1", "2", "3", "4", "5")
    assert list(fig.layout.xaxis.ticktext) == [s.team for s in stages]
    assert set(COLOURS) == set(StageStatus)  # every status has a colour


def test_pipeline_figure_one_dashed_arc_per_clarification_in_the_run() -> None:
    stages = pipeline_stages()
    clarifications = [
        Clarification.from_audit(audit_payload()),  # solution-architecture -> business-analysis, answered
        Clarification.from_audit(
            audit_payload(
                team="qa-engineering",
                hop_chain=["qa-engineering", "backend-engineering"],
                outcome="timeout",
                answer=None,
                question="<a href='https://evil'>x</a> <b>y</b> &amp;",
            )
        ),
        Clarification.from_audit(
            audit_payload(team="qa-engineering", hop_chain=["qa-engineering", "api-design"])
        ),  # target not in the run
        Clarification.from_audit(
            audit_payload(team="ml-engineering", hop_chain=["ml-engineering", "documentation"])
        ),  # asker not in the run
        Clarification.from_audit(
            audit_payload(outcome="unanswered", answer="business-analysis could not answer: no data")
        ),  # the target replied that it could not answer
    ]
    fig = pipeline_figure(stages, clarifications)
    arcs = [t for t in fig.data if t.line is not None and t.line.dash == "dash"]
    assert len(arcs) == 3
    assert [(a.x[0], a.x[-1]) for a in arcs] == [(1, 0), (3, 2), (1, 0)]
    assert all(max(a.y) > 0 and a.y[0] == a.y[-1] == 0 for a in arcs)
    assert [a.line.color for a in arcs] == ["#f59e0b", "#dc2626", "#dc2626"]  # answered / not answered
    hover = arcs[1].hovertext
    # Plotly interprets <a>, <b>, <span style> ... and entities in hover text: a question must be escaped.
    assert "<" not in hover and ">" not in hover
    assert (
        html.unescape(hover) == "qa-engineering asked backend-engineering: <a href='https://evil'>x</a> <b>y</b> &amp;"
    )
    assert len(fig.data) == 2 + 3
    assert json.loads(plotly_io.to_json(fig))["data"][-1]["marker"]["color"] == [COLOURS[s.status] for s in stages]


def test_pipeline_figure_of_no_stages() -> None:
    fig = pipeline_figure([], [Clarification.from_audit(audit_payload())])
    assert len(fig.data) == 2 and fig.data[1].x == ()
    plotly_io.to_json(fig)
