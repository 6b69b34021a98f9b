"""Drives one group chat in a process of its own, as a front door's driver would (the cross-process
and SIGKILL tests): ``python -m tests.integration.groupchat_driver SESSION_ID``; settings from the
environment (``FACTORY_*``). Prints the ended session's stop reason."""

from __future__ import annotations

import asyncio
import sys

from factory.settings import Settings
from factory.wiring import group_chats, open_factory


async def main(session_id: str) -> None:
    async with open_factory(Settings()) as factory:
        session = await group_chats(factory, poll_s=0.05).drive(session_id)
    sys.stdout.write(f"{session.stop_reason}\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
