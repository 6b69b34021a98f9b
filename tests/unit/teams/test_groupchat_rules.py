"""Group chat's rules as pure functions: who may speak, who speaks when the selector's answer is
unusable, when a discussion ends, which teams a session may have."""

from __future__ import annotations

import pytest

from factory.errors import InputError, UnknownTeam
from teams.groupchat.base import GroupChatOptions
from teams.groupchat.selection import candidates, choose, mentioned, round_robin, streak
from teams.groupchat.service import parse_teams
from teams.groupchat.termination import Progress, is_consensus, stop_reason

A, B, C = "solution-architecture", "security-engineering", "qa-engineering"
TEAMS = [A, B, C]


def test_a_streak_counts_the_last_teams_messages_in_a_row_and_an_operator_breaks_it() -> None:
    assert streak([], TEAMS) == (None, 0)
    assert streak(["ana", A, A], TEAMS) == (A, 2)
    assert streak([A, B, B, B], TEAMS) == (B, 3)
    assert streak([A, A, "ana"], TEAMS) == (A, 0)  # the operator spoke last: A may answer them


def test_a_team_that_spoke_max_consecutive_times_in_a_row_is_excluded() -> None:
    assert candidates([A], TEAMS, 1) == [B, C]
    assert candidates([A], TEAMS, 2) == TEAMS
    assert candidates([A, A], TEAMS, 2) == [B, C]
    assert candidates([A, "ana"], TEAMS, 1) == TEAMS


def test_round_robin_goes_to_the_next_allowed_team_after_the_last_speaker() -> None:
    assert round_robin(TEAMS, None, TEAMS) == A
    assert round_robin(TEAMS, A, [B, C]) == B
    assert round_robin(TEAMS, C, [A, B]) == A  # wraps around
    assert round_robin(TEAMS, B, [A, B]) == A  # C is not allowed: skipped


def test_an_answer_names_teams_by_slug_agent_name_spaces_or_display_name() -> None:
    assert mentioned("qa-engineering", TEAMS) == [C]
    assert mentioned("Next: security_engineering.", TEAMS) == [B]
    assert mentioned("solution architecture should answer", TEAMS) == [A]
    assert mentioned("The QA Engineering team", TEAMS) == [C]
    assert mentioned("marketing", TEAMS) == []
    assert mentioned("qa-engineering-lead", TEAMS) == []  # a longer word is not the team
    assert sorted(mentioned("qa-engineering or security-engineering", TEAMS)) == sorted([B, C])


def test_the_selectors_choice_stands_only_when_it_names_exactly_one_allowed_team() -> None:
    assert choose(C, [A], TEAMS, 1).speaker == C and choose(C, [A], TEAMS, 1).how == "selector"
    for unusable in ["marketing", A, f"{B} and {C}", "", None]:  # unknown, excluded, several, empty, failed
        picked = choose(unusable, [A], TEAMS, 1)
        assert (picked.speaker, picked.how) == (B, "round_robin"), unusable


def test_stop_reasons_in_order_of_precedence() -> None:
    options = GroupChatOptions(max_messages=4, timeout_s=10, token_budget=100)
    assert stop_reason(options, Progress(3, 9.9, 99)) is None
    assert stop_reason(options, Progress(4, 0, 0)) == "max_messages"
    assert stop_reason(options, Progress(0, 10, 0)) == "timeout"
    assert stop_reason(options, Progress(0, 0, 100)) == "token_budget"
    assert stop_reason(options, Progress(4, 10, 100, stop_requested_by="ana")) == "stopped"
    assert stop_reason(GroupChatOptions(token_budget=None), Progress(0, 0, 10**9)) is None


def test_consensus_counts_only_in_a_participants_message_as_a_word() -> None:
    assert is_consensus("We agree on the monolith. CONSENSUS", A, TEAMS, "CONSENSUS")
    assert not is_consensus("Reach CONSENSUS on this topic", "ana", TEAMS, "CONSENSUS")  # the operator / topic
    assert not is_consensus("no consensus yet", A, TEAMS, "CONSENSUS")  # the marker is a word, in its case
    assert not is_consensus("CONSENSUSLESS", A, TEAMS, "CONSENSUS")


def test_a_session_needs_two_to_eight_distinct_known_teams() -> None:
    assert parse_teams(f"{A}, {B}") == [A, B]
    with pytest.raises(UnknownTeam, match="unknown team 'marketing'"):
        parse_teams([A, "marketing"])
    with pytest.raises(InputError, match="2 to 8 teams"):
        parse_teams([A])
    with pytest.raises(InputError, match="named twice"):
        parse_teams([A, A])
    with pytest.raises(InputError, match="empty"):
        parse_teams(f"{A},,{B}")
