"""The session's AutoGen team: a ``SelectorGroupChat`` of the chosen teams, each an
``AssistantAgent`` speaking as itself — its identity docs and what it recalls from its memory bank
as the system message (as in direct team chat), its own model alias — through the factory's
model chain, streamed.

The team runs one turn at a time (``max_turns=1``): the driver stops it between messages, saves
its state, looks for the operator, and runs it again (AutoGen teams continue from their state).
"""

from __future__ import annotations

from collections.abc import Mapping

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import ChatAgent, Team
from autogen_agentchat.teams import SelectorGroupChat
from autogen_core.model_context import BufferedChatCompletionContext

from memory.gateway import MemoryGateway
from routing.base import Alias, RoutedChatModel
from teams.conversation import recollect, system_prompt
from teams.groupchat.base import GroupChatSession
from teams.groupchat.client import RoutedChatCompletionClient
from teams.groupchat.selection import Selector, agent_name
from teams.roster import team

#: The latest messages a speaker's prompt holds (the topic is in its system message): the prompt
#: stays bounded however long the discussion runs.
CONTEXT_MESSAGES = 24


def group_setting(session: GroupChatSession, slug: str) -> str:
    """How a team takes part in this discussion (after its identity in the system message)."""
    others = ", ".join(t for t in session.teams if t != slug)
    marker = session.options.consensus_marker
    return (
        f"This is a group discussion between teams: you, the {team(slug).name} team ({slug}), with {others}."
        f" The operator ({session.created_by} or a colleague) listens and may interject; answer them when they do."
        f"\nTopic: {session.topic}\n"
        f"Speak only as the {team(slug).name} team, in a few short paragraphs at most: give your team's view,"
        " build on or challenge what the others said, and never write another team's message."
        f" When you judge that the group agrees, end your message with the word {marker}."
    )


async def identities(session: GroupChatSession, gateway: MemoryGateway | None) -> dict[str, str]:
    """Each team's system message: identity docs, recall on the topic, and its part in the discussion."""
    prompts = {}
    for slug in session.teams:
        remembered, mental = await recollect(gateway, slug, session.topic)
        opening = system_prompt(slug, remembered, mental, setting="in a group discussion with other teams")
        prompts[slug] = f"{opening}\n\n{group_setting(session, slug)}"
    return prompts


def build_team(
    session: GroupChatSession,
    prompts: Mapping[str, str],
    model: RoutedChatModel,
    selector: Selector,
    *,
    timeout_s: float,
    window_tokens: int,
) -> tuple[SelectorGroupChat, dict[str, RoutedChatCompletionClient]]:
    """The team, and each speaker's client by slug (the driver reads a failed call's cause there)."""
    speakers = {agent_name(slug): slug for slug in session.teams}
    clients: dict[str, RoutedChatCompletionClient] = {}
    agents: list[ChatAgent | Team] = []
    for slug in session.teams:
        member = team(slug)
        clients[slug] = RoutedChatCompletionClient(
            model,
            alias=member.alias,  # type: ignore[arg-type]  # the roster's aliases are validated as Alias
            session_id=session.id,
            team=slug,
            purpose="groupchat",
            timeout_s=timeout_s,
            max_tokens=session.options.max_tokens_per_message,
            speakers=speakers,
            context_window=window_tokens,
            turn_cue=f"It is your turn, {slug}: speak as the {member.name} team.",
        )
        agents.append(
            AssistantAgent(
                agent_name(slug),
                model_client=clients[slug],
                description=f"{member.name}: {member.goal[:200]}",
                system_message=prompts[slug],
                model_client_stream=True,
                model_context=BufferedChatCompletionContext(buffer_size=CONTEXT_MESSAGES),
            )
        )
    # AutoGen needs a client for its own selection; ``selector`` always answers, so it is never asked.
    unused = RoutedChatCompletionClient(
        model, alias=selector_alias(session), session_id=session.id, team=None, purpose="groupchat_select",
        timeout_s=timeout_s,
    )  # fmt: skip
    chat = SelectorGroupChat(
        agents,
        model_client=unused,
        selector_func=selector.select,
        max_turns=1,
        allow_repeated_speaker=True,  # the selector enforces max_consecutive itself
    )
    return chat, clients


def selector_alias(session: GroupChatSession) -> Alias:
    return session.options.selector_alias
