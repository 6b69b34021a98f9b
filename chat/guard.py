"""What an operator's act in the chat turns into when it cannot be done: a refusal (who may do what,
``chat.access``) or a factory error, said in the chat in plain words, never a stack trace."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import chainlit as cl

from chat import access, render
from factory.errors import FactoryError


async def guarded(work: Awaitable[Any]) -> None:
    """Await ``work``; a refusal or a factory error becomes an error message in the chat."""
    try:
        await work
    except access.Refused as exc:
        await cl.ErrorMessage(content=f"Refused: {exc}").send()
    except FactoryError as exc:
        await cl.ErrorMessage(content=render.inert(str(exc))).send()
