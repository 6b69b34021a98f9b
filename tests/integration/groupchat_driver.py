"""Drives one group chat in a process of its own, as a front door's driver would (the cross-process
and SIGKILL tests): ``python -m tests.integration.groupchat_driver SESSION_ID``; settings from the
environment (``FACTORY_*``). Prints the ended session's stop reason.

Also what the group-chat tests share: the settings of a test's ``factory`` environment, and the
service opened on them in the test's own process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import SecretStr

from factory.settings import Settings
from factory.wiring import Factory, group_chats, open_factory
from teams.groupchat import GroupChats


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a `factory` process started with ``env`` would have (services, prefix, script)."""
    return Settings(
        data_dir=Path(env["FACTORY_DATA_DIR"]), database_url=SecretStr(env["FACTORY_DATABASE_URL"]),
        redis_url=SecretStr(env["FACTORY_REDIS_URL"]), redis_prefix=env["FACTORY_REDIS_PREFIX"],
        scripted_model=Path(env["FACTORY_SCRIPTED_MODEL"]),
    )  # fmt: skip


@asynccontextmanager
async def chats_of(env: dict[str, str]) -> AsyncIterator[tuple[GroupChats, Factory]]:
    """Group chats (and their factory) in the test's process, on ``env``'s services."""
    async with open_factory(settings_of(env)) as factory:
        yield group_chats(factory, poll_s=0.05), factory


async def main(session_id: str) -> None:
    async with open_factory(Settings()) as factory:
        session = await group_chats(factory, poll_s=0.05).drive(session_id)
    sys.stdout.write(f"{session.stop_reason}\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
